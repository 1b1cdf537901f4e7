//! Connectionist temporal classification loss (PyTorch `nn.functional.ctc_loss`), computed
//! by the log-space forward–backward algorithm with an analytic backward.
//!
//! Source: A. Graves, S. Fernández, F. Gomez, J. Schmidhuber, "Connectionist Temporal
//! Classification: Labelling Unsegmented Sequence Data with Recurrent Neural Networks",
//! ICML 2006, §4.1 (the α/β recursions over the label sequence extended with blanks).

use super::loss::shifted_log_sum_exp;
use super::Reduction;
use crate::cpu::{dense, map_rows, zeros};
use crate::dtype::with_dtype;
use crate::{Error, Float, Result, Tensor};

/// `ln Σ e^{x_i}`; `-inf` when every term is `-inf`.
fn log_sum_exp<T: Float>(xs: &[T]) -> T {
    let (m, ln_s) = shifted_log_sum_exp(xs);
    m + ln_s
}

/// One sequence of the batch: its frames of the dense `[T, N, C]` log-probabilities and its
/// labels. The extended label sequence has `2L + 1` states: blanks at the even states, the
/// labels at the odd ones.
struct Sequence<'a, T> {
    /// The whole dense `[T, N, C]` log-probabilities.
    log_probs: &'a [T],
    /// Offset of this sequence's row in frame 0 (`n · C`).
    offset: usize,
    /// Distance between consecutive frames (`N · C`).
    stride: usize,
    classes: usize,
    /// The input length: frames `0..frames` are used.
    frames: usize,
    labels: &'a [usize],
    blank: usize,
}

impl<T: Float> Sequence<'_, T> {
    /// The `C` log-probabilities of frame `t`.
    fn row(&self, t: usize) -> &[T] {
        &self.log_probs[t * self.stride + self.offset..][..self.classes]
    }

    fn states(&self) -> usize {
        2 * self.labels.len() + 1
    }

    /// The class emitted in state `s`.
    fn class(&self, s: usize) -> usize {
        if s.is_multiple_of(2) {
            self.blank
        } else {
            self.labels[s / 2]
        }
    }

    /// Whether state `s` may be entered from `s − 2`, skipping a blank: only a label state
    /// whose label differs from the previous one (two equal labels need a blank between).
    fn can_skip(&self, s: usize) -> bool {
        s % 2 == 1 && s >= 3 && self.labels[s / 2] != self.labels[s / 2 - 1]
    }

    /// The forward variables `α[t][s]` (log of the probability of all prefixes of paths that
    /// are in state `s` at frame `t`, emissions up to `t` included), a `frames × states`
    /// table, and the log-likelihood `ln p(labels | log_probs)` (`-inf` when no alignment
    /// fits in the frames; 0 for zero frames and no labels).
    fn alpha(&self) -> (Vec<T>, T) {
        let states = self.states();
        let ninf = T::neg_infinity();
        let mut a = vec![ninf; self.frames * states];
        if self.frames == 0 {
            let ll = if self.labels.is_empty() {
                T::zero()
            } else {
                ninf
            };
            return (a, ll);
        }
        let first = self.row(0);
        a[0] = first[self.blank];
        if states > 1 {
            a[1] = first[self.class(1)];
        }
        for t in 1..self.frames {
            let (done, rest) = a.split_at_mut(t * states);
            let prev = &done[(t - 1) * states..];
            let row = self.row(t);
            for (s, cur) in rest[..states].iter_mut().enumerate() {
                let stay = prev[s];
                let step = if s >= 1 { prev[s - 1] } else { ninf };
                let skip = if self.can_skip(s) { prev[s - 2] } else { ninf };
                *cur = log_sum_exp(&[stay, step, skip]) + row[self.class(s)];
            }
        }
        let last = &a[(self.frames - 1) * states..];
        let before_end = if states > 1 { last[states - 2] } else { ninf };
        let ll = log_sum_exp(&[last[states - 1], before_end]);
        (a, ll)
    }

    /// `−weight ·` the posterior occupancy of each class at each frame, a `frames × C`
    /// table: `γ[t][c] = Σ_{s: class(s) = c} e^{α[t][s] + β[t][s] − ln p}`, where `β[t][s]`
    /// sums the suffixes after frame `t` (emissions after `t` only). This is the gradient of
    /// `−weight · ln p` with respect to the log-probabilities. All zeros when `ln p = -inf`.
    fn grad(&self, weight: T) -> Vec<T> {
        let (states, c) = (self.states(), self.classes);
        let mut g = vec![T::zero(); self.frames * c];
        let (a, ll) = self.alpha();
        // No alignment: no gradient. (A NaN `ll` from NaN inputs carries on into `g`.)
        if ll == T::neg_infinity() {
            return g;
        }
        let ninf = T::neg_infinity();
        // β of the current frame, and β + the current frame's emission, for the step back.
        let mut beta = vec![ninf; states];
        let mut emitted = vec![ninf; states];
        beta[states - 1] = T::zero();
        if states > 1 {
            beta[states - 2] = T::zero();
        }
        for t in (0..self.frames).rev() {
            let gt = &mut g[t * c..(t + 1) * c];
            for (s, (&at, &bt)) in a[t * states..(t + 1) * states]
                .iter()
                .zip(&beta)
                .enumerate()
            {
                gt[self.class(s)] += (at + bt - ll).exp();
            }
            gt.iter_mut().for_each(|v| *v = -weight * *v);
            if t == 0 {
                break;
            }
            let row = self.row(t);
            for (s, e) in emitted.iter_mut().enumerate() {
                *e = beta[s] + row[self.class(s)];
            }
            for (s, b) in beta.iter_mut().enumerate() {
                let step = if s + 1 < states { emitted[s + 1] } else { ninf };
                let skip = if s + 2 < states && self.can_skip(s + 2) {
                    emitted[s + 2]
                } else {
                    ninf
                };
                *b = log_sum_exp(&[emitted[s], step, skip]);
            }
        }
        g
    }
}

/// The validated arguments of one [`Tensor::ctc_loss`] call.
struct Batch {
    /// `[T, N, C]` of the log-probabilities.
    shape: [usize; 3],
    targets: Vec<usize>,
    /// The labels of each sequence, as a range of `targets`.
    ranges: Vec<std::ops::Range<usize>>,
    input_lengths: Vec<usize>,
    blank: usize,
}

impl Batch {
    /// `f(n, sequence n)` for every sequence of the dense log-probabilities `lp`, in
    /// parallel; the results are in batch order and each is computed by one call, so they do
    /// not depend on the thread count.
    fn map<T: Float, R: Send>(
        &self,
        lp: &[T],
        f: impl Fn(usize, &Sequence<T>) -> R + Sync + Send,
    ) -> Vec<R> {
        let [frames, n, c] = self.shape;
        map_rows(n, frames * c, |i| {
            let sequence = Sequence {
                log_probs: lp,
                offset: i * c,
                stride: n * c,
                classes: c,
                frames: self.input_lengths[i],
                labels: &self.targets[self.ranges[i].clone()],
                blank: self.blank,
            };
            f(i, &sequence)
        })
    }
}

impl Tensor {
    /// Connectionist temporal classification loss (PyTorch `F.ctc_loss`; Graves et al.,
    /// ICML 2006) of the log-probabilities `self` `[T, N, C]` (frames, batch, classes; `f32`
    /// or `f64`, normally the output of [`Tensor::log_softmax`] over `C`; they are used as
    /// given, not renormalized).
    ///
    /// Sequence `n` uses frames `0..input_lengths[n]` and the next `target_lengths[n]`
    /// labels of `targets` (all targets concatenated, PyTorch's 1-D form). Its loss is
    /// `−ln Σ_π Π_t p_t(π_t)` over the alignments `π` that collapse to the labels (merge
    /// repeats, then drop blanks), computed by the log-space forward–backward recursions
    /// over the labels extended with a blank before, between and after them. Two equal
    /// labels need a blank between them, so a target needs at least `L + (adjacent equal
    /// pairs)` frames. A target that fits in no alignment has loss `+inf` (0 when
    /// `zero_infinity`); zero frames give `+inf` for a nonempty target and 0 for an empty
    /// one. The loss of arbitrary (unnormalized) inputs can be negative, and in `f32` that of
    /// a near-certain alignment can round to slightly below 0; it is not clamped.
    ///
    /// `reduction`: [`Reduction::None`] gives the `[N]` losses; [`Reduction::Sum`] their
    /// sum; [`Reduction::Mean`] is PyTorch's: each loss divided by its target length
    /// (at least 1), averaged over the batch (NaN for `N = 0`).
    ///
    /// Backward: the true gradient with respect to the log-probabilities,
    /// `∂loss_n / ∂log_probs[t, n, c] = −γ_n[t][c]`, the posterior probability that frame `t`
    /// emits class `c` (times the upstream weight of sequence `n`). It is exactly 0 at
    /// frames `t ≥ input_lengths[n]` and for every sequence with infinite loss (with or
    /// without `zero_infinity`; PyTorch gives NaN there without it). PyTorch's kernel instead
    /// returns `e^{log_probs} − γ`, which is right only after composition with
    /// `log_softmax` (its backward removes the difference); composed with `log_softmax`,
    /// both give `softmax(logits) − γ` with respect to the logits.
    ///
    /// Sequences are computed independently and in parallel, so results do not depend on
    /// the thread count. Memory: `O(T · (2L + 1))` per sequence in flight; the backward
    /// recomputes α.
    ///
    /// Errors with [`Error::InvalidArgument`] when `self` is not 3-D, `input_lengths` or
    /// `target_lengths` do not have `N` entries, `blank >= C`, an input length exceeds `T`,
    /// the target lengths do not sum to `targets.len()`, or a target is the blank or `>= C`
    /// (the message names the sequence and the values).
    pub fn ctc_loss(
        &self,
        targets: &[usize],
        input_lengths: &[usize],
        target_lengths: &[usize],
        blank: usize,
        reduction: Reduction,
        zero_infinity: bool,
    ) -> Result<Tensor> {
        let op = "ctc_loss";
        if self.rank() != 3 {
            return Err(Error::invalid(
                op,
                format!("log_probs must be [T, N, C], shape is {:?}", self.shape()),
            ));
        }
        let (frames, n, c) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        for (what, len) in [
            ("input lengths", input_lengths.len()),
            ("target lengths", target_lengths.len()),
        ] {
            if len != n {
                return Err(Error::invalid(
                    op,
                    format!("{len} {what} for a batch of {n} sequences"),
                ));
            }
        }
        if blank >= c {
            return Err(Error::invalid(
                op,
                format!("blank {blank} is out of range for {c} classes"),
            ));
        }
        if let Some((i, &len)) = input_lengths.iter().enumerate().find(|(_, &l)| l > frames) {
            return Err(Error::invalid(
                op,
                format!("input length {len} of sequence {i} exceeds the {frames} frames"),
            ));
        }
        let total: usize = target_lengths.iter().sum();
        if total != targets.len() {
            return Err(Error::invalid(
                op,
                format!(
                    "target lengths sum to {total}, but {} targets were given",
                    targets.len()
                ),
            ));
        }
        // Each sequence's labels, as a range of `targets`.
        let mut ranges = Vec::with_capacity(n);
        let mut start = 0;
        for (i, &len) in target_lengths.iter().enumerate() {
            let labels = &targets[start..start + len];
            if let Some(&t) = labels.iter().find(|&&t| t == blank || t >= c) {
                let why = if t == blank {
                    "is the blank".to_string()
                } else {
                    format!("is out of range for {c} classes")
                };
                return Err(Error::invalid(
                    op,
                    format!("target {t} of sequence {i} {why} (labels {labels:?})"),
                ));
            }
            ranges.push(start..start + len);
            start += len;
        }
        let batch = Batch {
            shape: [frames, n, c],
            targets: targets.to_vec(),
            ranges,
            input_lengths: input_lengths.to_vec(),
            blank,
        };
        // PyTorch's `mean` divisor of each sequence: its target length, at least 1.
        let divisors: Vec<usize> = target_lengths.iter().map(|&l| l.max(1)).collect();
        let x = self.detach();
        with_dtype!(self.dtype(), T => {
            let losses: Vec<T> = self.with_cpu::<T, _>(op, |d, l| {
                batch.map(&dense(d, l), |_, s| {
                    let loss = -s.alpha().1;
                    if zero_infinity && loss.is_infinite() {
                        T::default()
                    } else {
                        loss
                    }
                })
            })?;
            let out = match reduction {
                Reduction::None => Tensor::from_vec(losses, &[n])?,
                Reduction::Sum => {
                    let sum: T = losses.iter().copied().sum();
                    Tensor::scalar(sum.to_f64_lossless(), self.dtype())
                }
                Reduction::Mean => {
                    let sum: T = losses
                        .iter()
                        .zip(&divisors)
                        .map(|(&l, &d)| l / T::from_f64_lossy(d as f64))
                        .sum();
                    let mean = sum / T::from_f64_lossy(n as f64);
                    Tensor::scalar(mean.to_f64_lossless(), self.dtype())
                }
            };
            Ok(out.record(&[self], op, move |g| {
                let gv = g.to_vec::<T>()?;
                let weight = |i: usize| match reduction {
                    Reduction::None => gv[i],
                    Reduction::Sum => gv[0],
                    Reduction::Mean => gv[0] / T::from_f64_lossy((divisors[i] * n) as f64),
                };
                let grads = x.with_cpu::<T, _>(op, |d, l| {
                    batch.map(&dense(d, l), |i, s| s.grad(weight(i)))
                })?;
                // Scatter each sequence's `frames_n × C` gradient into `[T, N, C]`.
                let mut gx = zeros(frames * n * c);
                for (i, gi) in grads.iter().enumerate() {
                    for (t, row) in gi.chunks(c).enumerate() {
                        gx[(t * n + i) * c..][..c].copy_from_slice(row);
                    }
                }
                Ok(vec![Some(Tensor::from_vec(gx, &[frames, n, c])?)])
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Reduction;
    use crate::cpu::on_threads;
    use crate::{DType, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Log-softmax of standard normal logits `[T, N, C]`.
    fn random_log_probs(shape: &[usize], dtype: DType, rng: &mut ChaCha8Rng) -> Tensor {
        Tensor::randn(shape, 0.0, 2.0, dtype, rng)
            .log_softmax(2)
            .unwrap()
    }

    /// `−ln Σ_π Π_t p_t(π_t)` over all `C^T` paths `π` that collapse to `labels`.
    fn brute_force(lp: &[f64], frames: usize, c: usize, labels: &[usize], blank: usize) -> f64 {
        let mut total = 0.0;
        for code in 0..c.pow(frames as u32) {
            let path: Vec<usize> = (0..frames).map(|t| code / c.pow(t as u32) % c).collect();
            let mut collapsed = path.clone();
            collapsed.dedup();
            collapsed.retain(|&k| k != blank);
            if collapsed == labels {
                total += path
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| lp[t * c + k])
                    .sum::<f64>()
                    .exp();
            }
        }
        -total.ln()
    }

    /// The forward pass agrees with the sum over all alignments, for repeated, distinct and
    /// empty labels, a blank other than 0, and input lengths shorter than `T` (including
    /// too short: both sides give `+inf`).
    #[test]
    fn loss_matches_enumerated_alignments() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (frames, c) = (5, 3);
        let cases: [(&[usize], usize, usize); 7] = [
            (&[1], 5, 0),
            (&[1, 1], 5, 0),
            (&[1, 2, 1], 5, 0),
            (&[2, 2, 2], 5, 0),
            (&[], 4, 0),
            (&[0, 0, 2], 5, 1),
            (&[1, 1, 1], 4, 0),
        ];
        for (labels, len, blank) in cases {
            let lp = random_log_probs(&[frames, 1, c], DType::F64, &mut rng);
            let got = lp
                .ctc_loss(
                    labels,
                    &[len],
                    &[labels.len()],
                    blank,
                    Reduction::Sum,
                    false,
                )
                .unwrap()
                .item()
                .unwrap();
            let want = brute_force(&lp.to_vec_f64().unwrap(), len, c, labels, blank);
            assert!(
                got == want || (got - want).abs() <= 1e-12 * want.abs(),
                "labels {labels:?}, {len} frames: {got} vs {want}"
            );
        }
    }

    /// Per frame, the gradient of the summed loss is −(occupancy), which sums to −1 over the
    /// classes for frames within the input length, and is exactly 0 after it.
    #[test]
    fn occupancy_sums_to_one_within_the_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (frames, n, c) = (9, 3, 5);
        let lp = random_log_probs(&[frames, n, c], DType::F64, &mut rng)
            .requires_grad_(true)
            .unwrap();
        let lengths = [9, 6, 0];
        let loss = lp
            .ctc_loss(
                &[1, 4, 4, 2, 3],
                &lengths,
                &[3, 2, 0],
                0,
                Reduction::Sum,
                false,
            )
            .unwrap();
        loss.backward().unwrap();
        let g = lp.grad().unwrap().to_vec::<f64>().unwrap();
        for t in 0..frames {
            for (i, &len) in lengths.iter().enumerate() {
                let row = &g[(t * n + i) * c..][..c];
                if t < len {
                    let s: f64 = row.iter().sum();
                    assert!((s + 1.0).abs() < 1e-12, "frame {t}, sequence {i}: {s}");
                    assert!(row.iter().all(|&v| v <= 0.0), "{row:?}");
                } else {
                    assert!(row.iter().all(|&v| v == 0.0), "frame {t}: {row:?}");
                }
            }
        }
    }

    /// A large batch runs on several threads: loss and gradient are bit-identical on 1 and
    /// 4 threads, for each reduction.
    #[test]
    fn ctc_loss_is_thread_independent() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (frames, n, c) = (50, 64, 20);
        let lp = random_log_probs(&[frames, n, c], DType::F32, &mut rng);
        let input_lengths: Vec<usize> = (0..n).map(|_| rng.gen_range(20..=frames)).collect();
        let target_lengths: Vec<usize> = (0..n).map(|_| rng.gen_range(0..=10)).collect();
        let targets: Vec<usize> = (0..target_lengths.iter().sum())
            .map(|_| rng.gen_range(1..c))
            .collect();
        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
            let run = || {
                let x = lp.detach().requires_grad_(true).unwrap();
                let loss = x
                    .ctc_loss(
                        &targets,
                        &input_lengths,
                        &target_lengths,
                        0,
                        reduction,
                        true,
                    )
                    .unwrap();
                loss.sum_all().unwrap().backward().unwrap();
                (
                    loss.to_vec::<f32>().unwrap(),
                    x.grad().unwrap().to_vec::<f32>().unwrap(),
                )
            };
            let one = on_threads(1, run);
            assert!(one.0.iter().all(|v| v.is_finite()));
            assert_eq!(one, on_threads(4, run));
        }
    }

    /// f32 agrees with f64 on the same inputs: losses and gradients.
    #[test]
    fn f32_is_close_to_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (frames, n, c) = (30, 4, 8);
        let lp64 = random_log_probs(&[frames, n, c], DType::F64, &mut rng);
        let targets = [1, 2, 2, 3, 7, 7, 7, 5, 1, 6, 4];
        let (input_lengths, target_lengths) = ([30, 25, 12, 30], [4, 3, 0, 4]);
        let run = |dtype| {
            let x = lp64
                .to_dtype(dtype)
                .unwrap()
                .detach()
                .requires_grad_(true)
                .unwrap();
            let loss = x
                .ctc_loss(
                    &targets,
                    &input_lengths,
                    &target_lengths,
                    0,
                    Reduction::None,
                    false,
                )
                .unwrap();
            loss.sum_all().unwrap().backward().unwrap();
            (
                loss.to_vec_f64().unwrap(),
                x.grad().unwrap().to_vec_f64().unwrap(),
            )
        };
        let (l64, g64) = run(DType::F64);
        let (l32, g32) = run(DType::F32);
        for (a, b) in l32.iter().zip(&l64) {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-5, "loss {a} vs {b}");
        }
        for (a, b) in g32.iter().zip(&g64) {
            assert!((a - b).abs() <= 1e-4, "gradient {a} vs {b}");
        }
    }

    /// Log-probabilities of −150 and below (whose probabilities underflow in f32) give a
    /// finite loss and gradient, never NaN.
    #[test]
    fn very_negative_log_probs_stay_finite() {
        for dtype in [DType::F32, DType::F64] {
            for low in [-150.0, -1000.0] {
                let (frames, c) = (6, 4);
                // Class k at frame t has log-probability `low` unless k ≡ t (mod C).
                let v: Vec<f64> = (0..frames * c)
                    .map(|i| if i % c == (i / c) % c { -1e-3 } else { low })
                    .collect();
                let lp = Tensor::from_f64s(&v, &[frames, 1, c], dtype)
                    .unwrap()
                    .requires_grad_(true)
                    .unwrap();
                let loss = lp
                    .ctc_loss(&[2, 3, 3], &[frames], &[3], 0, Reduction::Mean, false)
                    .unwrap();
                let l = loss.item().unwrap();
                assert!(
                    l.is_finite() && l > -low / 3.0,
                    "{dtype:?}, {low}: loss {l}"
                );
                loss.backward().unwrap();
                let g = lp.grad().unwrap().to_vec_f64().unwrap();
                assert!(g.iter().all(|v| v.is_finite()), "{dtype:?}, {low}: {g:?}");
            }
        }
    }

    /// Every kind of bad argument is an error naming the problem and its values.
    #[test]
    fn bad_arguments_are_errors() {
        let lp = Tensor::zeros(&[4, 2, 5], DType::F64);
        let err = |lp: &Tensor, targets: &[usize], inputs: &[usize], lens: &[usize], blank| {
            lp.ctc_loss(targets, inputs, lens, blank, Reduction::Mean, false)
                .unwrap_err()
                .to_string()
        };
        let cases = [
            (
                err(&Tensor::zeros(&[4, 5], DType::F64), &[1], &[4], &[1], 0),
                "ctc_loss: log_probs must be [T, N, C], shape is [4, 5]",
            ),
            (
                err(&lp, &[1], &[4], &[1, 0], 0),
                "ctc_loss: 1 input lengths for a batch of 2 sequences",
            ),
            (
                err(&lp, &[1], &[4, 4], &[1], 0),
                "ctc_loss: 1 target lengths for a batch of 2 sequences",
            ),
            (
                err(&lp, &[1], &[4, 4], &[1, 0], 5),
                "ctc_loss: blank 5 is out of range for 5 classes",
            ),
            (
                err(&lp, &[1], &[4, 5], &[1, 0], 0),
                "ctc_loss: input length 5 of sequence 1 exceeds the 4 frames",
            ),
            (
                err(&lp, &[1, 2], &[4, 4], &[1, 0], 0),
                "ctc_loss: target lengths sum to 1, but 2 targets were given",
            ),
            (
                err(&lp, &[1, 2, 0], &[4, 4], &[1, 2], 0),
                "ctc_loss: target 0 of sequence 1 is the blank (labels [2, 0])",
            ),
            (
                err(&lp, &[1, 2, 5], &[4, 4], &[1, 2], 0),
                "ctc_loss: target 5 of sequence 1 is out of range for 5 classes (labels [2, 5])",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
