//! Layer normalization.

use crate::module::join;
use crate::{Module, Result, TensorRole};
use engine::{DType, Tensor};

/// Layer normalization over the last dimension (Ba et al. 2016; PyTorch `nn.LayerNorm`):
/// `y = (x − mean) / √(var + eps) · weight + bias`, with the biased variance.
///
/// Parameters: `weight` `[dim]` (ones), `bias` `[dim]` (zeros).
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer over vectors of size `dim` with PyTorch's `eps` default being 1e-5.
    pub fn new(dim: usize, eps: f64, dtype: DType) -> Result<Self> {
        Ok(LayerNorm {
            weight: Tensor::ones(&[dim], dtype).requires_grad_(true)?,
            bias: Tensor::zeros(&[dim], dtype).requires_grad_(true)?,
            eps,
        })
    }

    /// Normalize `x` `[..., dim]`. Errors when the last dimension is not `dim`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)?)
    }
}

impl Module for LayerNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "weight"), &self.weight, TensorRole::Parameter);
        f(join(prefix, "bias"), &self.bias, TensorRole::Parameter);
    }
}
