//! Differentiable tensor operations, one module per family.
mod binary;
mod concat;
mod matmul;
mod reduce;
mod softmax;
mod unary;
mod view;
