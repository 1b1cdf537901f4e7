//! Neural-network building blocks on top of [`engine`]: modules with named parameters and
//! `state_dict`, layers (including the σReparam linear), attention that reports its
//! entropy, losses, optimizers and checkpoints.
pub mod asr;
pub mod attention;
pub mod checkpoint;
mod conv;
mod dropout;
mod embedding;
mod error;
mod linear;
pub mod metrics;
mod mlp;
pub mod module;
mod norm;
pub mod optim;
pub mod patch;
pub mod pool;
pub mod simclr;
pub mod transformer;
pub mod trunk;
pub mod vit;

pub use asr::{AsrConfig, AsrTransformer};
pub use attention::SelfAttention;
pub use checkpoint::{Checkpoint, CheckpointError};
pub use conv::Conv1d;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use engine::GammaInit;
pub use error::{Error, Result};
pub use linear::{Linear, LinearKind, LinearLayer, SigmaReparamLinear};
pub use metrics::accuracy;
pub use mlp::Mlp;
pub use module::{Module, ModuleExt, TensorRole};
pub use norm::LayerNorm;
pub use optim::{
    clip_grad_norm, AdamW, AdamWConfig, CosineSchedule, Optimizer, ParamGroup, Sgd, SgdConfig,
};
pub use optim::{Lars, LarsConfig};
pub use patch::PatchEmbedding;
pub use pool::{ClsToken, Pooling};
pub use simclr::{nt_xent, SimClr};
pub use transformer::{Gpt, GptConfig};
pub use trunk::{Block, NormPlacement, Trunk, TrunkConfig};
pub use vit::{Vit, VitConfig};
