//! A tensor and reverse-mode autograd engine with σReparam as a first-class op.
//!
//! - [`Tensor`]: `f32`/`f64` n-dimensional arrays with strided views, on a [`Device`].
//! - Autograd: [`Tensor::backward`], [`no_grad`], [`Tensor::detach`]; see [`autograd`] for the
//!   rules (accumulation, freeing the graph, conventions at kinks and ties).
//! - Kernels: multithreaded through rayon (set `RAYON_NUM_THREADS` to choose the thread
//!   count); matrix products through the `gemm` crate.
//! - Fused ops: [`Tensor::linear_act`] (an [`Activation`] applied inside the product kernel),
//!   [`Tensor::scaled_dot_product_attention`], [`Tensor::layer_norm`], [`Tensor::cross_entropy`],
//!   [`Tensor::glu`], [`Tensor::ctc_loss`]; [`Tensor::conv1d`] runs its multiply-adds in the
//!   product kernels.
//! - σReparam: [`sigma_reparam_linear`], the fused spectrally reparametrized linear map, with
//!   its persistent [`PowerIterState`].
//! - [`gradcheck()`]: finite-difference verification of any differentiable function.
pub mod autograd;
mod cpu;
mod device;
mod dtype;
mod error;
pub mod gradcheck;
mod layout;
mod ops;
mod sigma_reparam;
mod storage;
mod tensor;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use cpu::dot_f64;
pub use device::Device;
pub use dtype::{DType, Float};
pub use error::{Error, Result};
pub use gradcheck::{gradcheck, gradcheck_with, GradcheckOptions, GradcheckReport};
pub use layout::{broadcast_shapes, checked_numel, Layout, Shape};
pub use ops::{Activation, AttentionOptions, Conv1dOptions, Reduction, IGNORE_INDEX};
pub use sigma_reparam::{
    sigma_reparam_linear, sigma_reparam_linear_act, GammaInit, PowerIterState, NORM_EPS, SIGMA_EPS,
};
pub use storage::{CpuStorage, Storage};
pub use tensor::{Tensor, TensorId};
