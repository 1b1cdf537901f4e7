//! Inverted dropout (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural
//! Networks from Overfitting"; PyTorch `nn.functional.dropout`).

use crate::{no_grad, Error, Result, Tensor};

impl Tensor {
    /// Inverted dropout: in training, each element is zeroed with probability `p` and the
    /// survivors are scaled by `1/(1−p)`, so the expectation is unchanged; the backward
    /// multiplies by the same mask. The mask is drawn from `rng` (one uniform per element in
    /// row-major order), so a seeded RNG reproduces it. Returns `self` unchanged (drawing
    /// nothing) when `!train` or `p == 0`; `p == 1` gives zeros and a zero gradient.
    ///
    /// Errors with [`Error::InvalidArgument`] when `p` is not in `[0, 1]` (or is NaN).
    pub fn dropout(&self, p: f64, train: bool, rng: &mut impl rand::Rng) -> Result<Tensor> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid(
                "dropout",
                format!("probability must be in [0, 1], got {p}"),
            ));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        // `gen` is in [0, 1), so with p = 1 every element is dropped and the (infinite)
        // scale is never used.
        let scale = 1.0 / (1.0 - p);
        let keep: Vec<f64> = (0..self.numel())
            .map(|_| if rng.gen::<f64>() < p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_f64s(&keep, self.shape(), self.dtype())?;
        let out = no_grad(|| self.mul(&mask))?;
        Ok(out.record(&[self], "dropout", move |g| Ok(vec![Some(g.mul(&mask)?)])))
    }
}
