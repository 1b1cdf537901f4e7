//! Neural-network building blocks on top of [`engine`]: modules with named parameters and
//! `state_dict`, layers (including the σReparam linear), attention that reports its
//! entropy, losses, optimizers and checkpoints.
mod error;
mod linear;
pub mod module;

pub use engine::GammaInit;
pub use error::{Error, Result};
pub use linear::{Linear, LinearKind, LinearLayer, SigmaReparamLinear};
pub use module::{Module, ModuleExt, TensorRole};
