//! Token and position embeddings.

use crate::module::join;
use crate::{Module, Result, TensorRole};
use engine::{DType, Tensor};

/// A lookup table `[num_embeddings, dim]` (PyTorch `nn.Embedding`): row `i` is the vector
/// of id `i`. The gradient of the table is the scatter-sum of the output gradient.
#[derive(Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// A table with entries drawn from N(0, `std`²) (PyTorch's default is `std` = 1; GPT-2
    /// uses 0.02).
    pub fn new(
        num_embeddings: usize,
        dim: usize,
        std: f64,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        let weight =
            Tensor::randn(&[num_embeddings, dim], 0.0, std, dtype, rng).requires_grad_(true)?;
        Ok(Embedding { weight })
    }

    /// The rows of `ids` (row-major with shape `ids_shape`), giving `[ids_shape..., dim]`.
    ///
    /// Errors when an id is out of range or `ids.len()` is not the product of `ids_shape`.
    pub fn forward(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Tensor> {
        Ok(self.weight.embedding(ids, ids_shape)?)
    }

    /// The table `[num_embeddings, dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Embedding {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "weight"), &self.weight, TensorRole::Parameter);
    }
}
