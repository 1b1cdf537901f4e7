//! Neural-network building blocks on top of [`engine`]: modules with named parameters and
//! `state_dict`, layers (including the σReparam linear), attention that reports its
//! entropy, losses, optimizers and checkpoints.
pub mod attention;
pub mod checkpoint;
mod dropout;
mod embedding;
mod error;
mod linear;
mod mlp;
pub mod module;
mod norm;
pub mod optim;
pub mod transformer;

pub use attention::CausalSelfAttention;
pub use checkpoint::{Checkpoint, CheckpointError};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use engine::GammaInit;
pub use error::{Error, Result};
pub use linear::{Linear, LinearKind, LinearLayer, SigmaReparamLinear};
pub use mlp::Mlp;
pub use module::{Module, ModuleExt, TensorRole};
pub use norm::LayerNorm;
pub use optim::{
    clip_grad_norm, AdamW, AdamWConfig, CosineSchedule, Optimizer, ParamGroup, Sgd, SgdConfig,
};
pub use transformer::{Block, Gpt, GptConfig, NormPlacement};
