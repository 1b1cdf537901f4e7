//! Differentiable tensor operations, one module per family.
mod attention;
mod binary;
mod concat;
mod conv;
mod ctc;
mod dropout;
mod index;
mod linear;
mod loss;
mod matmul;
mod norm;
mod normalize;
mod reduce;
mod select;
mod softmax;
mod unary;
mod view;

pub use attention::AttentionOptions;
pub use conv::Conv1dOptions;
pub use linear::Activation;
pub(crate) use linear::{check_linear, weight_dims, LinearShape};
pub use loss::{Reduction, IGNORE_INDEX};
