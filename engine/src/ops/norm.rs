//! Layer normalization over the last dimension (Ba, Kiros & Hinton 2016, "Layer
//! Normalization", arXiv:1607.06450; PyTorch `nn.functional.layer_norm`), one fused op
//! with an analytic backward for the input, the weight and the bias.

use crate::cpu::{dense, fill_rows};
use crate::dtype::with_dtype;
use crate::{Error, Float, Result, Tensor};

/// Mean and `1/√(var + eps)` of one row. The variance takes two passes (mean first, then
/// `Σ(x − mean)²`), which avoids the cancellation of `E[x²] − E[x]²`; it is biased
/// (divided by the row length), as in PyTorch.
fn row_stats<T: Float>(row: &[T], eps: T) -> (T, T) {
    let n = T::from_f64_lossy(row.len() as f64);
    let mean = row.iter().copied().sum::<T>() / n;
    let var = row.iter().map(|&x| (x - mean) * (x - mean)).sum::<T>() / n;
    (mean, T::one() / (var + eps).sqrt())
}

/// `x̂ = (x − mean)·rstd` row by row, rows of length `d`.
fn normalized<T: Float>(x: &[T], d: usize, eps: T) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    fill_rows(&mut out, d, |r, o| {
        let row = &x[r * d..(r + 1) * d];
        let (mean, rstd) = row_stats(row, eps);
        for (oj, &xj) in o.iter_mut().zip(row) {
            *oj = (xj - mean) * rstd;
        }
    });
    out
}

/// `x̂ ⊙ w + b` row by row (each factor optional).
fn forward<T: Float>(x: &[T], w: Option<&[T]>, b: Option<&[T]>, d: usize, eps: T) -> Vec<T> {
    let mut y = normalized(x, d, eps);
    fill_rows(&mut y, d, |_, o| {
        for (j, v) in o.iter_mut().enumerate() {
            *v = *v * w.map_or(T::one(), |w| w[j]) + b.map_or(T::zero(), |b| b[j]);
        }
    });
    y
}

/// Input gradient, row by row: with `ĝ = g ⊙ w` (or `g` without weight),
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`.
fn backward_input<T: Float>(x: &[T], g: &[T], w: Option<&[T]>, d: usize, eps: T) -> Vec<T> {
    let n = T::from_f64_lossy(d as f64);
    let mut out = vec![T::zero(); x.len()];
    fill_rows(&mut out, d, |r, o| {
        let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
        let (mean, rstd) = row_stats(xr, eps);
        let gh = |j: usize| w.map_or(gr[j], |w| gr[j] * w[j]);
        let (mut s, mut sx) = (T::zero(), T::zero());
        for (j, &xj) in xr.iter().enumerate() {
            s += gh(j);
            sx += gh(j) * (xj - mean) * rstd;
        }
        let (s, sx) = (s / n, sx / n);
        for (j, (oj, &xj)) in o.iter_mut().zip(xr).enumerate() {
            *oj = rstd * (gh(j) - s - (xj - mean) * rstd * sx);
        }
    });
    out
}

impl Tensor {
    /// Layer normalization over the last dimension (Ba et al. 2016; PyTorch `layer_norm`
    /// with `normalized_shape = [D]`): each row `x` of length `D` becomes
    /// `(x − mean) / √(var + eps) ⊙ weight + bias`, with the biased variance computed in two
    /// passes. `weight` and `bias` have shape `[D]`; each is optional. The output has the
    /// shape of `self`. A single op: its backward is analytic for all three inputs.
    ///
    /// Errors when `self` is 0-dimensional, `weight`/`bias` are not `[D]` or differ in dtype
    /// or device, or `eps` is negative or NaN.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        let op = "layer_norm";
        let Some(&d) = self.shape().last() else {
            return Err(Error::invalid(
                op,
                "needs at least one dimension, got a scalar",
            ));
        };
        for p in weight.iter().chain(bias.iter()) {
            self.check_same(op, p)?;
            if p.shape() != [d] {
                return Err(Error::ShapeMismatch {
                    op,
                    lhs: self.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        if eps.is_nan() || eps < 0.0 {
            return Err(Error::invalid(op, format!("eps must be >= 0, got {eps}")));
        }
        let out = with_dtype!(self.dtype(), T => {
            let w = weight.map(|w| w.to_vec::<T>()).transpose()?;
            let b = bias.map(|b| b.to_vec::<T>()).transpose()?;
            let y = self.with_cpu::<T, _>(op, |xd, l| {
                forward(&dense(xd, l), w.as_deref(), b.as_deref(), d, T::from_f64_lossy(eps))
            })?;
            Tensor::from_vec(y, self.shape())?
        });
        let x = self.detach();
        let w = weight.map(Tensor::detach);
        let has_bias = bias.is_some();
        let (gw, gb) = (
            weight.is_some_and(Tensor::requires_grad),
            bias.is_some_and(Tensor::requires_grad),
        );
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        Ok(out.record(&inputs, op, move |g| {
            with_dtype!(g.dtype(), T => {
                let eps = T::from_f64_lossy(eps);
                let gd = g.to_vec::<T>()?;
                let wd = w.as_ref().map(|w| w.to_vec::<T>()).transpose()?;
                let (dx, xhat) = x.with_cpu::<T, _>(op, |xd, l| {
                    let xd = dense(xd, l);
                    let dx = backward_input(&xd, &gd, wd.as_deref(), d, eps);
                    (dx, gw.then(|| normalized(&xd, d, eps)))
                })?;
                let mut grads = vec![Some(Tensor::from_vec(dx, x.shape())?)];
                // Weight and bias gradients keep the input's shape; the engine sums them to [D].
                if w.is_some() {
                    grads.push(xhat.map(|h| g.mul(&Tensor::from_vec(h, x.shape())?)).transpose()?);
                }
                if has_bias {
                    grads.push(gb.then(|| g.clone()));
                }
                Ok(grads)
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::on_threads;
    use crate::{DType, Tensor};
    use rand::SeedableRng;

    /// Rows large enough for the parallel path: output and all three gradients are
    /// bit-identical on 1 and 4 threads, and the output matches the composite formula.
    #[test]
    fn layer_norm_is_thread_independent_and_matches_composite() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (n, d) = (300, 128);
        let x = Tensor::randn(&[n, d], 3.0, 2.0, DType::F64, &mut rng);
        let w = Tensor::randn(&[d], 1.0, 0.5, DType::F64, &mut rng);
        let b = Tensor::randn(&[d], 0.0, 0.5, DType::F64, &mut rng);
        let g = Tensor::randn(&[n, d], 0.0, 1.0, DType::F64, &mut rng);
        let run = || {
            let leaves: Vec<Tensor> = [&x, &w, &b]
                .iter()
                .map(|t| t.detach().requires_grad_(true).unwrap())
                .collect();
            let y = leaves[0]
                .layer_norm(Some(&leaves[1]), Some(&leaves[2]), 1e-5)
                .unwrap();
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.to_vec::<f64>().unwrap()];
            out.extend(
                leaves
                    .iter()
                    .map(|t| t.grad().unwrap().to_vec::<f64>().unwrap()),
            );
            out
        };
        let one = on_threads(1, run);
        assert_eq!(one, on_threads(4, run));
        let mean = x.mean(&[1], true).unwrap();
        let xc = x.sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean(&[1], true).unwrap();
        let want = xc
            .div(&var.add_scalar(1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .mul(&w)
            .unwrap()
            .add(&b)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        for (a, e) in one[0].iter().zip(&want) {
            assert!((a - e).abs() <= 1e-9 + 1e-7 * e.abs(), "{a} vs {e}");
        }
    }
}
