//! Umbrella crate for people who embed the engine: re-exports [`engine`] (tensors,
//! autograd, CPU kernels, σReparam, `gradcheck`) and [`nn`] (layers, attention with
//! entropy, losses, optimizers, checkpoints).
pub use engine;
pub use nn;
