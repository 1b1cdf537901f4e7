//! The position-wise feed-forward network of a transformer block.

use crate::module::join;
use crate::{LinearLayer, Module, Result, TensorRole};
use engine::{Activation, Tensor};

/// The GELU MLP of a block: `proj(gelu(fc(x)))`, `fc` `[d, 4d]`, `proj` `[4d, d]`.
#[derive(Debug)]
pub struct Mlp {
    fc: LinearLayer,
    proj: LinearLayer,
}

impl Mlp {
    /// An MLP of hidden width `hidden` with linears built by `make(in, out)`.
    pub fn new(
        d_model: usize,
        hidden: usize,
        mut make: impl FnMut(usize, usize) -> Result<LinearLayer>,
    ) -> Result<Self> {
        Ok(Mlp {
            fc: make(d_model, hidden)?,
            proj: make(hidden, d_model)?,
        })
    }

    /// `[..., d]` to `[..., d]`, with the tanh-approximated GELU (GPT-2's), computed inside
    /// `fc`'s product ([`Activation::Gelu`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj
            .forward(&self.fc.forward_act(x, Activation::Gelu)?)
    }

    /// The linears `fc` and `proj` with their names.
    pub fn linears(&self) -> [(&'static str, &LinearLayer); 2] {
        [("fc", &self.fc), ("proj", &self.proj)]
    }
}

impl Module for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.fc.visit(&join(prefix, "fc"), f);
        self.proj.visit(&join(prefix, "proj"), f);
    }

    fn set_training(&self, training: bool) {
        self.fc.set_training(training);
        self.proj.set_training(training);
    }
}
