//! Layer normalization over the last dimension (Ba, Kiros & Hinton 2016, "Layer
//! Normalization", arXiv:1607.06450; PyTorch `nn.functional.layer_norm`), one fused op
//! with an analytic backward for the input, the weight and the bias.

use crate::cpu::{
    dense, fill_rows, lane_dot, lane_sum, map_rows, sequential, widest, zeros, Widen,
};
use crate::dtype::with_dtype;
use crate::{Error, Float, Result, Tensor};
use rayon::prelude::*;

/// Mean and `1/√(var + eps)` of one row. The variance takes two passes (mean first, then
/// `Σ(x − mean)²`), which avoids the cancellation of `E[x²] − E[x]²`; it is biased
/// (divided by the row length), as in PyTorch. Both sums run in lanes ([`lane_sum`]).
fn row_stats<T: Float>(row: &[T], eps: T) -> (T, T) {
    let n = T::from_f64_lossy(row.len() as f64);
    let mean = lane_sum(row, |x| x) / n;
    let var = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
    (mean, T::one() / (var + eps).sqrt())
}

/// Rows per partial sum of the weight and bias gradients. Fixed, so the summation order,
/// and with it the result, does not depend on the thread count.
const PARAM_BLOCK_ROWS: usize = 32;

/// `(mean, rstd)` of every row of length `d`, flattened as `[mean₀, rstd₀, mean₁, …]`.
fn all_row_stats<T: Float>(x: &[T], d: usize, eps: T) -> Vec<T> {
    let n_rows = x.len().checked_div(d).unwrap_or(0);
    map_rows(n_rows, d, |r| row_stats(&x[r * d..(r + 1) * d], eps))
        .into_iter()
        .flat_map(|(m, s)| [m, s])
        .collect()
}

/// `x̂ ⊙ w + b` row by row with `x̂ = (x − mean)·rstd` (each factor optional), given the
/// per-row `stats` of [`all_row_stats`].
fn forward<T: Float>(x: &[T], stats: &[T], w: Option<&[T]>, b: Option<&[T]>, d: usize) -> Vec<T> {
    let mut y = zeros(x.len());
    fill_rows(&mut y, d, |r, o| {
        let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
        for (v, &xj) in o.iter_mut().zip(&x[r * d..(r + 1) * d]) {
            *v = (xj - mean) * rstd;
        }
        // Separate slice loops, not per-element `Option` lookups, so that each vectorizes.
        if let Some(w) = w {
            o.iter_mut().zip(w).for_each(|(v, &wj)| *v *= wj);
        }
        if let Some(b) = b {
            o.iter_mut().zip(b).for_each(|(v, &bj)| *v += bj);
        }
    });
    y
}

/// Gradients of one layer norm from the saved row statistics, in one pass over the rows:
/// the input gradient `dx` and, per block of [`PARAM_BLOCK_ROWS`] rows, partial column sums
/// `[Σ g ⊙ x̂ ; Σ g]` (`2·d` values per block).
struct Backward<T> {
    dx: Vec<T>,
    partials: Vec<T>,
}

impl<T: Float> Backward<T> {
    fn run(x: &[T], g: &[T], stats: &[T], w: Option<&[T]>, d: usize) -> Self {
        if x.is_empty() {
            return Backward {
                dx: Vec::new(),
                partials: Vec::new(),
            };
        }
        let block = PARAM_BLOCK_ROWS * d;
        let n_blocks = x.len().div_ceil(block);
        let mut dx = zeros(x.len());
        let mut partials = vec![T::zero(); n_blocks * 2 * d];
        let one_block = |(i, (dx, acc)): (usize, (&mut [T], &mut [T]))| {
            let r0 = i * PARAM_BLOCK_ROWS;
            let rows = r0 * d..r0 * d + dx.len();
            widest(BackwardRows {
                x: &x[rows.clone()],
                g: &g[rows],
                stats: &stats[2 * r0..],
                w,
                dx,
                acc,
            });
        };
        if sequential(x.len()) {
            dx.chunks_mut(block)
                .zip(partials.chunks_mut(2 * d))
                .enumerate()
                .for_each(one_block);
        } else {
            dx.par_chunks_mut(block)
                .zip(partials.par_chunks_mut(2 * d))
                .enumerate()
                .for_each(one_block);
        }
        Backward { dx, partials }
    }

    /// `(Σ_rows g ⊙ x̂, Σ_rows g)`: the block partials summed in block order.
    fn param_grads(&self, d: usize) -> (Vec<T>, Vec<T>) {
        if d == 0 {
            return (Vec::new(), Vec::new());
        }
        let mut total = vec![T::zero(); 2 * d];
        for p in self.partials.chunks(2 * d) {
            total.iter_mut().zip(p).for_each(|(t, &v)| *t += v);
        }
        let db = total.split_off(d);
        (total, db)
    }
}

/// The backward of consecutive rows of length `d = acc.len() / 2` (`x`, `g` and `dx` hold
/// whole rows; `stats` starts at the first of them), adding into one block's partial sums
/// `acc`. Run through [`widest`], so its loops use the CPU's full vector width.
struct BackwardRows<'a, T> {
    x: &'a [T],
    g: &'a [T],
    stats: &'a [T],
    w: Option<&'a [T]>,
    dx: &'a mut [T],
    acc: &'a mut [T],
}

impl<T: Float> Widen for BackwardRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let d = self.acc.len() / 2;
        let mut scratch = vec![T::zero(); 2 * d];
        for (r, dxr) in self.dx.chunks_mut(d).enumerate() {
            let (xr, gr) = (&self.x[r * d..(r + 1) * d], &self.g[r * d..(r + 1) * d]);
            let stats = (self.stats[2 * r], self.stats[2 * r + 1]);
            backward_row(xr, gr, stats, self.w, dxr, self.acc, &mut scratch);
        }
    }
}

/// One row of the backward. Input gradient, with `ĝ = g ⊙ w` (or `g` without weight):
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`; `g ⊙ x̂` and `g` are added into the
/// block's partial column sums `acc` (`2·d` values). `scratch` (`2·d` values) holds `x̂`
/// and `ĝ`, so that every loop below is a plain slice loop and the two means are lane sums.
#[inline(always)]
fn backward_row<T: Float>(
    xr: &[T],
    gr: &[T],
    (mean, rstd): (T, T),
    w: Option<&[T]>,
    dxr: &mut [T],
    acc: &mut [T],
    scratch: &mut [T],
) {
    let d = xr.len();
    let n = T::from_f64_lossy(d as f64);
    let (xhat, gh) = scratch.split_at_mut(d);
    for (h, &xj) in xhat.iter_mut().zip(xr) {
        *h = (xj - mean) * rstd;
    }
    match w {
        Some(w) => {
            for ((o, &gj), &wj) in gh.iter_mut().zip(gr).zip(w) {
                *o = gj * wj;
            }
        }
        None => gh.copy_from_slice(gr),
    }
    let (acc_w, acc_b) = acc.split_at_mut(d);
    for ((a, &gj), &h) in acc_w.iter_mut().zip(gr).zip(&*xhat) {
        *a += gj * h;
    }
    for (a, &gj) in acc_b.iter_mut().zip(gr) {
        *a += gj;
    }
    let s = lane_sum(gh, |v| v) / n;
    let sx = lane_dot(gh, xhat) / n;
    for ((o, &ghj), &h) in dxr.iter_mut().zip(&*gh).zip(&*xhat) {
        *o = rstd * (ghj - s - h * sx);
    }
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
        let (out, stats) = with_dtype!(self.dtype(), T => {
            let w = weight.map(|w| w.to_vec::<T>()).transpose()?;
            let b = bias.map(|b| b.to_vec::<T>()).transpose()?;
            let (y, stats) = self.with_cpu::<T, _>(op, |xd, l| {
                let x = dense(xd, l);
                let stats = all_row_stats(&x, d, T::from_f64_lossy(eps));
                (forward(&x, &stats, w.as_deref(), b.as_deref(), d), stats)
            })?;
            let n_rows = stats.len() / 2;
            (Tensor::from_vec(y, self.shape())?, Tensor::from_vec(stats, &[n_rows, 2])?)
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
                let wd = w.as_ref().map(|w| w.to_vec::<T>()).transpose()?;
                let bw = x.with_cpu::<T, _>(op, |xd, xl| {
                    g.with_cpu::<T, _>(op, |gd, gl| {
                        stats.with_cpu::<T, _>(op, |sd, _| {
                            Backward::run(&dense(xd, xl), &dense(gd, gl), sd, wd.as_deref(), d)
                        })
                    })
                })???;
                let (dw, db) = bw.param_grads(d);
                let mut grads = vec![Some(Tensor::from_vec(bw.dx, x.shape())?)];
                if w.is_some() {
                    grads.push(gw.then(|| Tensor::from_vec(dw, &[d])).transpose()?);
                }
                if has_bias {
                    grads.push(gb.then(|| Tensor::from_vec(db, &[d])).transpose()?);
                }
                Ok(grads)
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{on_threads, run_as, wide_copies, WideCopy};
    use crate::DType;
    use rand::{Rng, SeedableRng};

    /// The backward rows give the same bits through every copy this CPU can run, for row
    /// lengths around the vector widths (tails), with and without a weight, in f32 and f64.
    #[test]
    fn backward_rows_match_the_baseline_bit_for_bit() {
        fn check<T: Float>(rng: &mut impl Rng) {
            for d in [1, 7, 8, 15, 16, 17, 33, 256] {
                let rows = 5;
                let mut draw = |n: usize| -> Vec<T> {
                    (0..n)
                        .map(|_| T::from_f64_lossy(rng.gen_range(-3.0..3.0)))
                        .collect()
                };
                let (x, g, w) = (draw(rows * d), draw(rows * d), draw(d));
                let stats = all_row_stats(&x, d, T::from_f64_lossy(1e-5));
                for w in [None, Some(&w[..])] {
                    let run = |copy| {
                        let (mut dx, mut acc) = (vec![T::zero(); rows * d], vec![T::zero(); 2 * d]);
                        let k = BackwardRows {
                            x: &x,
                            g: &g,
                            stats: &stats,
                            w,
                            dx: &mut dx,
                            acc: &mut acc,
                        };
                        run_as(copy, k);
                        // Exact in f64, so comparing f64 bits compares the values' bits.
                        let bits = |v: &[T]| -> Vec<u64> {
                            v.iter().map(|x| x.to_f64_lossless().to_bits()).collect()
                        };
                        (bits(&dx), bits(&acc))
                    };
                    let base = run(WideCopy::Baseline);
                    for copy in wide_copies() {
                        assert!(run(copy) == base, "{copy:?}, d = {d}");
                    }
                }
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        check::<f32>(&mut rng);
        check::<f64>(&mut rng);
    }

    /// An empty last dim (BC-18): the forward and all three gradients are empty tensors of
    /// the right shapes, not a panic.
    #[test]
    fn layer_norm_of_an_empty_last_dim_has_empty_gradients() {
        let leaf = |shape: &[usize]| {
            Tensor::zeros(shape, DType::F64)
                .requires_grad_(true)
                .unwrap()
        };
        let (x, w, b) = (leaf(&[3, 0]), leaf(&[0]), leaf(&[0]));
        let y = x.layer_norm(Some(&w), Some(&b), 1e-5).unwrap();
        assert_eq!(y.shape(), [3, 0]);
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(x.grad().unwrap().shape(), [3, 0]);
        assert_eq!(w.grad().unwrap().shape(), [0]);
        assert_eq!(b.grad().unwrap().shape(), [0]);
    }

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
