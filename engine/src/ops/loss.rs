//! Fused cross-entropy of class logits (PyTorch `nn.functional.cross_entropy` with class
//! indices), numerically stable for logits of any magnitude, with an analytic backward.

use crate::cpu::{dense, fill_rows, map_rows};
use crate::dtype::with_dtype;
use crate::{Error, Float, Result, Tensor};

/// How [`Tensor::cross_entropy`] and [`Tensor::ctc_loss`] combine the per-row (per-sequence)
/// losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// PyTorch's `mean`. `cross_entropy`: sum over the rows whose target is not ignored,
    /// divided by their number (NaN when every row is ignored). `ctc_loss`: each sequence's
    /// loss divided by its target length (at least 1), averaged over the batch.
    Mean,
    /// Sum over rows; a 0-dimensional tensor.
    Sum,
    /// No reduction: one loss per row, shape `[N]`, 0 for ignored rows.
    None,
}

/// The conventional "no label" target: pass `Some(IGNORE_INDEX)` as `ignore_index` and put
/// it in the targets of rows to skip (PyTorch's default is `-100`, which `usize` cannot hold).
pub const IGNORE_INDEX: usize = usize::MAX;

/// The row maximum `m` (0 when not finite) and `ln Σ_j e^{x_j − m}`. They are kept apart so
/// that `log p_t = (x_t − m) − ln Σ` never subtracts two huge numbers: forming
/// `m + ln Σ` first would round the `ln 2` of `[1e8, 1e8]` away in f32 (BC-07).
pub(crate) fn shifted_log_sum_exp<T: Float>(row: &[T]) -> (T, T) {
    let m = row
        .iter()
        .fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    let m = if m.is_finite() { m } else { T::zero() };
    let s: T = row.iter().map(|&x| (x - m).exp()).sum();
    (m, s.ln())
}

impl Tensor {
    /// Cross-entropy `loss_i = −log softmax(x_i)[t_i] = log Σ_j e^{x_ij} − x_{i,t_i}` of
    /// logits `self` `[N, C]` against class indices `targets` (`N` of them), fused into one
    /// op: log-sum-exp with the row max subtracted, and the analytic backward
    /// `(softmax(x_i) − onehot(t_i)) · w_i`, where `w_i` is the upstream gradient of row `i`
    /// (divided by the number of counted rows for [`Reduction::Mean`]).
    ///
    /// Rows whose target equals `ignore_index` contribute neither loss nor gradient, and
    /// [`Reduction::Mean`] divides by the number of NON-ignored rows (PyTorch semantics,
    /// BC-09). When every row is ignored (or `N = 0`), `Mean` returns NaN (0/0, as PyTorch)
    /// and `Sum` returns 0; the gradient is exactly 0 in both cases, never NaN.
    ///
    /// Errors with [`Error::InvalidArgument`] when `self` is not 2-D, `targets.len() != N`,
    /// or a non-ignored target is `>= C` (the message names the row, the target and `C`).
    pub fn cross_entropy(
        &self,
        targets: &[usize],
        ignore_index: Option<usize>,
        reduction: Reduction,
    ) -> Result<Tensor> {
        let op = "cross_entropy";
        if self.rank() != 2 {
            return Err(Error::invalid(
                op,
                format!("logits must be [N, C], shape is {:?}", self.shape()),
            ));
        }
        let (n, c) = (self.shape()[0], self.shape()[1]);
        if targets.len() != n {
            return Err(Error::invalid(
                op,
                format!("{} targets for {n} rows of logits", targets.len()),
            ));
        }
        // The target of each counted row; `None` for ignored rows.
        let rows: Vec<Option<usize>> = targets
            .iter()
            .map(|&t| (ignore_index != Some(t)).then_some(t))
            .collect();
        if let Some((i, t)) = rows
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.filter(|&t| t >= c).map(|t| (i, t)))
        {
            return Err(Error::invalid(
                op,
                format!("target {t} of row {i} is out of range for {c} classes"),
            ));
        }
        let count = rows.iter().flatten().count();
        let x = self.detach();
        with_dtype!(self.dtype(), T => {
            let losses = self.with_cpu::<T, _>(op, |d, l| {
                let xd = dense(d, l);
                map_rows(n, c, |i| match rows[i] {
                    None => T::default(),
                    Some(t) => {
                        let row = &xd[i * c..(i + 1) * c];
                        let (m, ln_s) = shifted_log_sum_exp(row);
                        ln_s - (row[t] - m)
                    }
                })
            })?;
            let out = match reduction {
                Reduction::None => Tensor::from_vec(losses, &[n])?,
                Reduction::Sum | Reduction::Mean => {
                    let mut total: T = losses.iter().copied().sum();
                    if reduction == Reduction::Mean {
                        total /= T::from_f64_lossy(count as f64);
                    }
                    Tensor::scalar(total.to_f64_lossless(), self.dtype())
                }
            };
            Ok(out.record(&[self], op, move |g| {
                let gv = g.to_vec::<T>()?;
                let weight = |i: usize| match reduction {
                    Reduction::None => gv[i],
                    Reduction::Sum => gv[0],
                    Reduction::Mean => gv[0] / T::from_f64_lossy(count as f64),
                };
                let gx = x.with_cpu::<T, _>(op, |d, l| {
                    let xd = dense(d, l);
                    let mut gx = vec![T::default(); n * c];
                    fill_rows(&mut gx, c, |i, o| {
                        let Some(t) = rows[i] else { return };
                        let row = &xd[i * c..(i + 1) * c];
                        let (m, ln_s) = shifted_log_sum_exp(row);
                        let w = weight(i);
                        for (oj, &xj) in o.iter_mut().zip(row) {
                            *oj = w * ((xj - m) - ln_s).exp();
                        }
                        o[t] -= w;
                    });
                    gx
                })?;
                Ok(vec![Some(Tensor::from_vec(gx, &[n, c])?)])
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Reduction, IGNORE_INDEX};
    use crate::cpu::on_threads;
    use crate::{DType, Tensor};
    use rand::{Rng, SeedableRng};

    /// Logits large enough for the parallel path: loss and gradient are bit-identical on 1
    /// and 4 threads, and the loss agrees with the composite `−log_softmax` at the targets.
    #[test]
    fn cross_entropy_is_thread_independent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (n, c) = (300, 128);
        let x = Tensor::randn(&[n, c], 0.0, 4.0, DType::F32, &mut rng);
        let targets: Vec<usize> = (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    IGNORE_INDEX
                } else {
                    rng.gen_range(0..c)
                }
            })
            .collect();
        let run = || {
            let x = x.detach().requires_grad_(true).unwrap();
            let loss = x
                .cross_entropy(&targets, Some(IGNORE_INDEX), Reduction::Mean)
                .unwrap();
            loss.backward().unwrap();
            (
                loss.item().unwrap(),
                x.grad().unwrap().to_vec::<f32>().unwrap(),
            )
        };
        let one = on_threads(1, run);
        assert_eq!(one, on_threads(4, run));
        let lsm = x.log_softmax(1).unwrap().to_vec_f64().unwrap();
        let counted: Vec<(usize, usize)> = targets
            .iter()
            .enumerate()
            .filter(|(_, &t)| t != IGNORE_INDEX)
            .map(|(i, &t)| (i, t))
            .collect();
        let want =
            -counted.iter().map(|&(i, t)| lsm[i * c + t]).sum::<f64>() / counted.len() as f64;
        assert!(
            (one.0 - want).abs() <= 1e-5 + 1e-4 * want.abs(),
            "{} vs {want}",
            one.0
        );
    }
}
