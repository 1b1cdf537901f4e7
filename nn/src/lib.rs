//! Neural-network building blocks on top of [`engine`]: modules with named parameters and
//! `state_dict`, layers (including the σReparam linear), attention that reports its
//! entropy, losses, optimizers and checkpoints.
pub mod checkpoint;
mod dropout;
mod embedding;
mod error;
pub mod module;
mod norm;
pub mod optim;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use error::{Error, Result};
pub use module::{Module, ModuleExt, TensorRole};
pub use norm::LayerNorm;
pub use optim::{
    clip_grad_norm, AdamW, AdamWConfig, CosineSchedule, Optimizer, ParamGroup, Sgd, SgdConfig,
};
