//! Numerically stable softmax and log-softmax along one dimension, each with a fused
//! single-kernel backward.

use crate::cpu::{fill_rows, lane_dot, lane_sum, zeros, LANES};
use crate::dtype::with_dtype;
use crate::{Float, Result, Tensor};

#[derive(Clone, Copy)]
enum Kind {
    Softmax,
    LogSoftmax,
}

/// Maximum of a row (NaN entries are skipped here; they still reach the output through
/// the exponentials).
#[inline(always)]
fn row_max<T: Float>(row: &[T]) -> T {
    let mut acc = [T::neg_infinity(); LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a = if b > *a { b } else { *a };
        }
    }
    let m = tail
        .iter()
        .fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

/// `row ← e^{row − m}` with `m` the row maximum (detached; 0 for a row without a finite
/// entry, where `-inf − -inf` would give NaN); returns `(m, Σ e^{row − m})`.
#[inline(always)]
fn exp_shifted_in_place<T: Float>(row: &mut [T]) -> (T, T) {
    let m = row_max(row);
    let m = if m.is_finite() { m } else { T::zero() };
    // Two passes: the exponentials vectorize only without the running sum.
    for v in row.iter_mut() {
        *v = (*v - m).fast_exp();
    }
    (m, lane_sum(row, |v| v))
}

/// Softmax of one dense row, in place.
#[inline(always)]
pub(crate) fn softmax_in_place<T: Float>(row: &mut [T]) {
    let (_, s) = exp_shifted_in_place(row);
    let inv = T::one() / s;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Softmax backward of one dense row, in place: `g ← y ⊙ (g − Σ g⊙y)` for the forward
/// output `y`.
#[inline(always)]
pub(crate) fn softmax_grad_in_place<T: Float>(y: &[T], g: &mut [T]) {
    let dot = lane_dot(y, g);
    for (gi, &yi) in g.iter_mut().zip(y) {
        *gi = yi * (*gi - dot);
    }
}

/// Row-wise forward over dense rows of length `n`: subtract the row max (detached), then
/// `p = e^{x-m} / Σ e^{x-m}` or `log p = (x - m) - ln Σ e^{x-m}`.
fn forward_rows<T: Float>(x: &[T], n: usize, kind: Kind) -> Vec<T> {
    let mut out = zeros(x.len());
    fill_rows(&mut out, n, |r, o| {
        let row = &x[r * n..(r + 1) * n];
        o.copy_from_slice(row);
        match kind {
            Kind::Softmax => softmax_in_place(o),
            Kind::LogSoftmax => {
                let (m, s) = exp_shifted_in_place(o);
                // (x − m) − ln s, never x − (m + ln s): with huge logits m + ln s rounds
                // ln s away (f32 [1e8, 1e8] would give 0 instead of −ln 2; BC-07).
                let ls = s.ln();
                for (oi, &xi) in o.iter_mut().zip(row) {
                    *oi = (xi - m) - ls;
                }
            }
        }
    });
    out
}

/// Row-wise backward given the forward output `y` and upstream `g`:
/// softmax: `dx = y ⊙ (g − Σ g⊙y)`; log-softmax: `dx = g − e^{y} Σ g`.
fn backward_rows<T: Float>(y: &[T], g: &[T], n: usize, kind: Kind) -> Vec<T> {
    let mut out = zeros(y.len());
    fill_rows(&mut out, n, |r, o| {
        let (yr, gr) = (&y[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
        match kind {
            Kind::Softmax => {
                o.copy_from_slice(gr);
                softmax_grad_in_place(yr, o);
            }
            Kind::LogSoftmax => {
                let sg = lane_sum(gr, |v| v);
                for ((oi, &yi), &gi) in o.iter_mut().zip(yr).zip(gr) {
                    *oi = gi - yi.fast_exp() * sg;
                }
            }
        }
    });
    out
}

impl Tensor {
    /// Apply a row kernel along `dim`: move `dim` last, densify, run, move it back.
    fn along_dim<T: Float>(
        &self,
        dim: usize,
        op: &'static str,
        f: impl Fn(&[T], usize) -> Vec<T>,
    ) -> Result<Tensor> {
        let last = self.rank() - 1;
        let x = crate::no_grad(|| self.transpose(dim, last)?.contiguous())?;
        let n = x.shape().get(last).copied().unwrap_or(1);
        let v = x.with_cpu::<T, _>(op, |d, l| f(&d[l.contiguous_range().expect("dense")], n))?;
        Tensor::from_vec(v, x.shape())?.transpose(dim, last)
    }

    fn softmax_kind(&self, dim: usize, kind: Kind, op: &'static str) -> Result<Tensor> {
        self.check_dim(op, dim)?;
        let out = crate::no_grad(
            || with_dtype!(self.dtype(), T => self.along_dim::<T>(dim, op, |x, n| forward_rows(x, n, kind))),
        )?;
        let y = out.detach();
        Ok(out.record(&[self], op, move |g| {
            let gx = with_dtype!(g.dtype(), T => {
                let last = y.rank() - 1;
                let yt = y.transpose(dim, last)?.contiguous()?;
                let gt = g.transpose(dim, last)?.contiguous()?;
                let n = yt.shape()[last];
                let v = yt.with_cpu::<T, _>(op, |yd, yl| {
                    gt.with_cpu::<T, _>(op, |gd, gl| {
                        backward_rows(
                            &yd[yl.contiguous_range().expect("dense")],
                            &gd[gl.contiguous_range().expect("dense")],
                            n,
                            kind,
                        )
                    })
                })??;
                Tensor::from_vec(v, yt.shape())?.transpose(dim, last)?
            });
            Ok(vec![Some(gx)])
        }))
    }

    /// `softmax(x)_i = e^{x_i} / Σ_j e^{x_j}` along `dim`, computed with the row maximum
    /// subtracted so large logits never overflow. A row that is entirely `-inf` gives NaN.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_kind(dim, Kind::Softmax, "softmax")
    }

    /// `log_softmax(x)_i = x_i − log Σ_j e^{x_j}` along `dim` (log-sum-exp with the max
    /// subtracted; exact for logits of any magnitude).
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_kind(dim, Kind::LogSoftmax, "log_softmax")
    }
}
