//! Dropout with a mode switch.

use crate::{Error, Module, Result, TensorRole};
use engine::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};

/// Inverted dropout (Srivastava et al. 2014; PyTorch `nn.Dropout`): in training mode each
/// element is zeroed with probability `p` and the rest scaled by `1/(1−p)`; in eval mode,
/// or with `p` = 0, the input passes through unchanged. The random numbers come from the
/// caller's RNG, so a run that checkpoints its RNG resumes identically.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    training: AtomicBool,
}

impl Dropout {
    /// Dropout with probability `p`; errors unless `0 ≤ p < 1`.
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Config(format!(
                "dropout probability must be in [0, 1), got {p}"
            )));
        }
        Ok(Dropout {
            p,
            training: AtomicBool::new(true),
        })
    }

    /// Whether [`Dropout::forward`] changes its input: training mode with `p > 0`.
    pub fn is_active(&self) -> bool {
        self.p > 0.0 && self.training.load(Ordering::Relaxed)
    }

    /// Apply dropout to `x` (any shape).
    pub fn forward(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        if !self.is_active() {
            return Ok(x.clone());
        }
        Ok(x.dropout(self.p, true, rng)?)
    }
}

impl Module for Dropout {
    fn visit(&self, _prefix: &str, _f: &mut dyn FnMut(String, &Tensor, TensorRole)) {}

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
