//! Multi-head self-attention, causal or bidirectional, that reports its attention entropy,
//! and the lower bound of that entropy from Theorem 3.1 of Zhai et al. (ICML 2023, arXiv
//! 2303.06296).
//!
//! Attention entropy, the paper's central diagnostic: for attention probabilities `A` (rows
//! sum to 1), `Ent(A_i) = −Σ_j A_ij ln A_ij`, reported per head as the mean over query
//! positions and examples. It is taken from the probabilities the forward pass itself
//! computes, before dropout, with no second product: from the fused op
//! ([`Tensor::scaled_dot_product_attention_with_entropy`]), or from the separate softmax
//! when attention dropout is active. Masked keys have probability exactly 0 and add
//! nothing.

use crate::module::join;
use crate::{Dropout, LinearLayer, Module, Result, TensorRole};
use engine::{DType, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Mean entropy per head of attention probabilities `p` `[batch, heads, queries, keys]`:
/// `−Σ_j p ln p` per row (terms with `p = 0` count 0), averaged over batch and queries,
/// summed in a fixed order in `f64`. Errors unless `p` has rank 4.
pub fn mean_entropy_per_head(p: &Tensor) -> Result<Vec<f64>> {
    padded_mean_entropy_per_head(p, None)
}

/// [`mean_entropy_per_head`] of padded sequences: with `lengths` (one per batch entry),
/// only the query rows `i < lengths[b]` are averaged. Errors unless `p` has rank 4 and
/// `lengths`, when given, one length per batch entry.
pub fn padded_mean_entropy_per_head(p: &Tensor, lengths: Option<&[usize]>) -> Result<Vec<f64>> {
    let &[b, h, t, s] = p.shape() else {
        return Err(crate::Error::Config(format!(
            "attention entropy needs probabilities [batch, heads, queries, keys], got {:?}",
            p.shape()
        )));
    };
    if lengths.is_some_and(|l| l.len() != b) {
        return Err(crate::Error::Config(format!(
            "attention entropy needs {b} lengths, got {lengths:?}"
        )));
    }
    let real = |batch: usize| lengths.map_or(t, |l| l[batch].min(t));
    let rows = (0..b).map(real).sum::<usize>().max(1) as f64;
    let mut out = vec![0.0; h];
    let mut add = |i: usize, x: f64| {
        let (row, pair) = ((i / s) % t, i / (t * s));
        if x > 0.0 && row < real(pair / h) {
            out[pair % h] -= x * x.ln();
        }
    };
    match p.dtype() {
        DType::F32 => p
            .to_vec::<f32>()?
            .into_iter()
            .enumerate()
            .for_each(|(i, x)| add(i, x as f64)),
        DType::F64 => p
            .to_vec::<f64>()?
            .into_iter()
            .enumerate()
            .for_each(|(i, x)| add(i, x)),
    }
    Ok(out.into_iter().map(|e| e / rows).collect())
}

/// Theorem 3.1 of Zhai et al. (as transcribed from secondary sources): for a sequence of
/// `t` tokens and `s = ‖W_K W_Qᵀ‖₂ · ‖X Xᵀ‖₂` (logit scale folded in), with
/// `β = exp(−s·√(t/(t−1)))`, every attention row has entropy at least
/// `ln(1 + (t−1)β) + s·√(t(t−1))·β / (1 + (t−1)β)`. `s = 0` gives `ln t`; `t ≤ 1` gives 0.
pub fn entropy_lower_bound(t: usize, s: f64) -> f64 {
    if t <= 1 {
        return 0.0;
    }
    let t = t as f64;
    let beta = (-s * (t / (t - 1.0)).sqrt()).exp();
    let d = 1.0 + (t - 1.0) * beta;
    d.ln() + s * (t * (t - 1.0)).sqrt() * beta / d
}

/// Largest singular value of the linear map given by `apply` (ℝⁿ → ℝⁿ, symmetric positive
/// semi-definite, e.g. `AᵀA`), by power iteration from a fixed start: returns the top
/// eigenvalue.
fn top_eigenvalue(n: usize, apply: impl Fn(&[f64]) -> Vec<f64>) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|i| 1.0 + 0.5 * ((i as f64) * 0.7).sin())
        .collect();
    let mut lambda = 0.0;
    for _ in 0..100 {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        v.iter_mut().for_each(|x| *x /= norm);
        let w = apply(&v);
        let next: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
        v = w;
        if (next - lambda).abs() <= 1e-9 * next.abs() {
            return next;
        }
        lambda = next;
    }
    lambda
}

/// `y = A x` for `A` row-major `[rows, cols]`.
fn matvec(a: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            a[r * cols..(r + 1) * cols]
                .iter()
                .zip(x)
                .map(|(p, q)| p * q)
                .sum()
        })
        .collect()
}

/// `y = Aᵀ x` for `A` row-major `[rows, cols]`.
fn matvec_t(a: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; cols];
    for r in 0..rows {
        for (yi, &ai) in y.iter_mut().zip(&a[r * cols..(r + 1) * cols]) {
            *yi += ai * x[r];
        }
    }
    y
}

/// The weight a linear layer actually applies: `W`, or `(γ / max(σ, ε)) W` for σReparam.
fn effective_weight(l: &LinearLayer) -> Result<Vec<f64>> {
    Ok(match l {
        LinearLayer::Plain(p) => p.weight().to_vec_f64()?,
        LinearLayer::SigmaReparam(s) => {
            let scale = s.gamma() / s.sigma().max(engine::SIGMA_EPS);
            s.weight()
                .to_vec_f64()?
                .into_iter()
                .map(|w| w * scale)
                .collect()
        }
    })
}

/// Multi-head self-attention (Vaswani et al. 2017) with separate query, key, value and
/// output projections, each plain or σReparam.
///
/// Submodules: `q`, `k`, `v`, `proj` (all `[d_model, d_model]` with bias). When `causal`,
/// query `i` attends to keys `0..=i` (a decoder, as GPT); otherwise every query attends to
/// every key (bidirectional, as a ViT or speech encoder). Every forward in which recording
/// is on (the default) stores the mean attention entropy per head
/// ([`SelfAttention::entropy`]) and keeps the input for [`SelfAttention::entropy_bound`].
#[derive(Debug)]
pub struct SelfAttention {
    q: LinearLayer,
    k: LinearLayer,
    v: LinearLayer,
    proj: LinearLayer,
    n_heads: usize,
    causal: bool,
    attn_drop: Dropout,
    record: AtomicBool,
    entropy: Mutex<Vec<f64>>,
    /// The last recorded input and its sequence lengths (`None`: all `t`).
    last_input: Mutex<Option<(Tensor, Option<Vec<usize>>)>>,
    mask: Mutex<Option<Tensor>>,
}

impl SelfAttention {
    /// Attention over `n_heads` heads of width `d_model / n_heads`, with the causal mask
    /// when `causal`; projections built by `make(in, out)` (so the caller picks plain or
    /// σReparam); `dropout` applies to the attention probabilities. Errors when `d_model`
    /// is not a multiple of `n_heads`, `n_heads` is 0 or `dropout` ∉ [0, 1).
    pub fn new(
        d_model: usize,
        n_heads: usize,
        causal: bool,
        dropout: f64,
        mut make: impl FnMut(usize, usize) -> Result<LinearLayer>,
    ) -> Result<Self> {
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(crate::Error::Config(format!(
                "d_model ({d_model}) must be a positive multiple of n_heads ({n_heads})"
            )));
        }
        Ok(SelfAttention {
            q: make(d_model, d_model)?,
            k: make(d_model, d_model)?,
            v: make(d_model, d_model)?,
            proj: make(d_model, d_model)?,
            n_heads,
            causal,
            attn_drop: Dropout::new(dropout)?,
            record: AtomicBool::new(true),
            entropy: Mutex::new(Vec::new()),
            last_input: Mutex::new(None),
            mask: Mutex::new(None),
        })
    }

    /// The additive causal mask `[t, t]`: 0 on and below the diagonal, −∞ above.
    fn mask(&self, t: usize, dtype: DType) -> Result<Tensor> {
        let mut slot = self.mask.lock().expect("mask lock poisoned");
        if let Some(m) = slot
            .as_ref()
            .filter(|m| m.shape()[0] == t && m.dtype() == dtype)
        {
            return Ok(m.clone());
        }
        let v: Vec<f64> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f64::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let m = Tensor::from_f64s(&v, &[t, t], dtype)?;
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Attend over `x` `[batch, t, d_model]`, giving `[batch, t, d_model]`; `rng` drives
    /// attention dropout. Errors on a shape mismatch.
    pub fn forward(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        self.forward_padded(x, None, rng)
    }

    /// [`SelfAttention::forward`] over a batch of sequences padded to `t`: with `lengths`
    /// (one per sequence, each in `1..=t`), the padding positions `lengths[i]..t` are
    /// hidden as keys from every query (PyTorch's `key_padding_mask`), and the recorded
    /// entropy averages the rows of real positions only. The outputs at padding positions
    /// are computed but meaningless. Errors on a shape mismatch or bad lengths.
    pub fn forward_padded(
        &self,
        x: &Tensor,
        lengths: Option<&[usize]>,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        let &[b, t, d] = x.shape() else {
            return Err(crate::Error::Config(format!(
                "attention input must be [batch, t, d_model], got {:?}",
                x.shape()
            )));
        };
        let (h, dh) = (self.n_heads, d / self.n_heads);
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape(&[b, t, h, dh])?.permute(&[0, 2, 1, 3])?)
        };
        let scale = 1.0 / (dh as f64).sqrt();
        let q = heads(self.q.forward(x)?)?;
        let k = heads(self.k.forward(x)?)?;
        let v = heads(self.v.forward(x)?)?;
        let record = self.record.load(Ordering::Relaxed);
        // The fused op unless dropout must act on the probabilities in between; the entropy
        // comes from the probabilities the output is computed from, before dropout.
        let (y, entropy) = if self.attn_drop.is_active() {
            let p = self.probs(&q, &k, scale, lengths)?;
            let entropy = record
                .then(|| padded_mean_entropy_per_head(&p, lengths))
                .transpose()?;
            (self.attn_drop.forward(&p, rng)?.matmul(&v)?, entropy)
        } else {
            let opts = engine::AttentionOptions {
                causal: self.causal,
                scale,
                key_lengths: lengths,
                entropy: record,
            };
            let (y, e) = q.attention(&k, &v, &opts)?;
            (y, record.then_some(e))
        };
        if let Some(entropy) = entropy {
            *self.entropy.lock().expect("entropy lock poisoned") = entropy;
            *self.last_input.lock().expect("input lock poisoned") =
                Some((x.detach(), lengths.map(<[usize]>::to_vec)));
        }
        self.proj
            .forward(&y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, d])?)
    }

    /// Attention probabilities `softmax(scale · q kᵀ (+ causal mask) (+ padding mask))`
    /// `[batch, heads, t, t]` from heads `[batch, heads, t, d_head]`, as separate
    /// differentiable ops.
    fn probs(
        &self,
        q: &Tensor,
        k: &Tensor,
        scale: f64,
        lengths: Option<&[usize]>,
    ) -> Result<Tensor> {
        let (b, t) = (q.shape()[0], q.shape()[2]);
        let mut scores = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(scale)?;
        if self.causal {
            scores = scores.add(&self.mask(t, q.dtype())?)?;
        }
        if let Some(lengths) = lengths {
            if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t) {
                return Err(crate::Error::Config(format!(
                    "attention lengths must hold {b} lengths in 1..={t}, got {lengths:?}"
                )));
            }
            let mask: Vec<f64> = (0..b * t)
                .map(|i| {
                    if i % t < lengths[i / t] {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
                .collect();
            scores = scores.add(&Tensor::from_f64s(&mask, &[b, 1, 1, t], q.dtype())?)?;
        }
        Ok(scores.softmax(3)?)
    }

    /// Turn entropy recording on or off (off skips the entropy sums and keeping the input
    /// on steps that are not logged).
    pub fn set_record(&self, on: bool) {
        self.record.store(on, Ordering::Relaxed);
        if !on {
            *self.last_input.lock().expect("input lock poisoned") = None;
        }
    }

    /// Mean attention entropy per head of the last recorded forward (empty before any).
    pub fn entropy(&self) -> Vec<f64> {
        self.entropy.lock().expect("entropy lock poisoned").clone()
    }

    /// The Theorem 3.1 lower bound of the mean attention entropy per head for the last
    /// recorded input `X` (each sequence separately): `s_h = ‖W_Q^h W_K^hᵀ‖₂/√d_head ·
    /// ‖X‖₂²` from the effective (σReparam-scaled) weights, biases ignored. Bidirectional:
    /// every row sees all `T` keys, so the bound is the full-row bound with `T`. Causal:
    /// query `i` sees `i+1` keys, so the bound is averaged over rows with `T = i+1` (using
    /// the whole sequence's `‖X‖₂`, which only loosens it). Then averaged over sequences;
    /// a padded sequence ([`SelfAttention::forward_padded`]) counts its real positions
    /// only. `None` before any recorded forward.
    pub fn entropy_bound(&self) -> Result<Option<Vec<f64>>> {
        let Some((x, lengths)) = self.last_input.lock().expect("input lock poisoned").clone()
        else {
            return Ok(None);
        };
        let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (h, dh) = (self.n_heads, d / self.n_heads);
        let (wq, wk) = (effective_weight(&self.q)?, effective_weight(&self.k)?);
        // ‖Wq_hᵀ Wk_h‖₂ per head, Wq_h = rows h·dh..(h+1)·dh of the [d, d] weight.
        let qk_norm: Vec<f64> = (0..h)
            .map(|i| {
                let (q, k) = (
                    &wq[i * dh * d..(i + 1) * dh * d],
                    &wk[i * dh * d..(i + 1) * dh * d],
                );
                // M = qᵀ k; MᵀM v = kᵀ q qᵀ k v.
                top_eigenvalue(d, |v| {
                    let kv = matvec(k, dh, d, v);
                    let mkv = matvec_t(q, dh, d, &kv);
                    let qm = matvec(q, dh, d, &mkv);
                    matvec_t(k, dh, d, &qm)
                })
                .sqrt()
                    / (dh as f64).sqrt()
            })
            .collect();
        let xs = x.to_vec_f64()?;
        let mut out = vec![0.0; h];
        for s in 0..b {
            // A padded sequence is its first `lengths[s]` positions.
            let t = lengths.as_ref().map_or(t, |l| l[s]);
            let xb = &xs[s * x.shape()[1] * d..][..t * d];
            let x_sq = top_eigenvalue(d, |v| matvec_t(xb, t, d, &matvec(xb, t, d, v)));
            for (o, &m) in out.iter_mut().zip(&qk_norm) {
                let sv = m * x_sq;
                *o += if self.causal {
                    (1..=t).map(|n| entropy_lower_bound(n, sv)).sum::<f64>() / t as f64
                } else {
                    entropy_lower_bound(t, sv)
                };
            }
        }
        Ok(Some(out.into_iter().map(|v| v / b as f64).collect()))
    }

    /// The projections in order `q`, `k`, `v`, `proj`, with their names.
    pub fn linears(&self) -> [(&'static str, &LinearLayer); 4] {
        [
            ("q", &self.q),
            ("k", &self.k),
            ("v", &self.v),
            ("proj", &self.proj),
        ]
    }
}

impl Module for SelfAttention {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        for (name, l) in self.linears() {
            l.visit(&join(prefix, name), f);
        }
    }

    fn set_training(&self, training: bool) {
        for (_, l) in self.linears() {
            l.set_training(training);
        }
        self.attn_drop.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LinearKind;
    use rand::SeedableRng;

    #[test]
    fn entropy_of_uniform_row_is_ln_t_and_of_one_hot_row_is_zero() {
        let t = 7;
        let uniform = Tensor::full(&[2, 3, t, t], 1.0 / t as f64, DType::F64);
        for e in mean_entropy_per_head(&uniform).unwrap() {
            assert!((e - (t as f64).ln()).abs() < 1e-12, "{e}");
        }
        let mut one_hot = vec![0.0f32; 2 * t * t];
        for r in 0..2 * t {
            one_hot[r * t + r % t] = 1.0;
        }
        let p = Tensor::from_vec(one_hot, &[1, 2, t, t]).unwrap();
        assert_eq!(mean_entropy_per_head(&p).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn bound_matches_reference_values() {
        assert!((entropy_lower_bound(197, 0.0) - 197f64.ln()).abs() < 1e-12);
        assert!((entropy_lower_bound(197, 1.0) - 5.278).abs() < 1e-3);
        assert!((entropy_lower_bound(197, 5.0) - 3.672).abs() < 1e-3);
        assert!((entropy_lower_bound(16, 5.0) - 0.490).abs() < 1e-3);
    }

    /// Two heads on `d_model` 8, plain f64 projections drawn from one seeded rng.
    fn attention(causal: bool, dropout: f64) -> SelfAttention {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        SelfAttention::new(8, 2, causal, dropout, |i, o| {
            LinearLayer::new(LinearKind::Plain, i, o, true, DType::F64, &mut rng)
        })
        .unwrap()
    }

    /// `x` with every feature of position `pos` (of every sequence) moved by 1.
    fn bump(x: &Tensor, pos: usize) -> Tensor {
        let &[b, t, d] = x.shape() else {
            panic!("rank 3")
        };
        let mut v = x.to_vec_f64().unwrap();
        for s in 0..b {
            v[(s * t + pos) * d..(s * t + pos + 1) * d]
                .iter_mut()
                .for_each(|e| *e += 1.0);
        }
        Tensor::from_f64s(&v, x.shape(), x.dtype()).unwrap()
    }

    #[test]
    fn only_bidirectional_attention_lets_earlier_positions_see_later_ones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Tensor::randn(&[2, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
        for causal in [true, false] {
            let attn = attention(causal, 0.0);
            let y = attn.forward(&x, &mut rng).unwrap().to_vec_f64().unwrap();
            let y2 = attn
                .forward(&bump(&x, 4), &mut rng)
                .unwrap()
                .to_vec_f64()
                .unwrap();
            assert_eq!(y.len(), 2 * 5 * 8);
            for s in 0..2 {
                let (early, last) = (s * 40..s * 40 + 32, s * 40 + 32..(s + 1) * 40);
                assert_eq!(y[early.clone()] == y2[early], causal, "causal {causal}");
                assert_ne!(y[last.clone()], y2[last]);
            }
        }
    }

    /// With `X = 0` the scores are the same constant for every key (biases only), so every
    /// row is uniform over the keys it sees: entropy and bound (`s = 0`) are both `ln T`
    /// bidirectional and the mean of `ln(i+1)` causal.
    #[test]
    fn entropy_and_bound_are_ln_t_for_uniform_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Tensor::zeros(&[2, 5, 8], DType::F64);
        for causal in [true, false] {
            let attn = attention(causal, 0.0);
            assert!(attn.entropy().is_empty());
            assert!(attn.entropy_bound().unwrap().is_none());
            attn.forward(&x, &mut rng).unwrap();
            let want = if causal {
                (1..=5).map(|n| (n as f64).ln()).sum::<f64>() / 5.0
            } else {
                5f64.ln()
            };
            let bound = attn.entropy_bound().unwrap().unwrap();
            for (e, lb) in attn.entropy().iter().zip(&bound) {
                assert!((e - want).abs() < 1e-12, "causal {causal}: {e} vs {want}");
                assert!((lb - want).abs() < 1e-9, "causal {causal}: {lb} vs {want}");
            }
        }
    }

    #[test]
    fn recorded_entropy_lies_between_the_bound_and_its_maximum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let x = Tensor::randn(&[2, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
        for causal in [true, false] {
            let attn = attention(causal, 0.0);
            attn.forward(&x, &mut rng).unwrap();
            let (ent, bound) = (attn.entropy(), attn.entropy_bound().unwrap().unwrap());
            assert_eq!((ent.len(), bound.len()), (2, 2));
            let max = if causal {
                (1..=5).map(|n| (n as f64).ln()).sum::<f64>() / 5.0
            } else {
                5f64.ln()
            };
            for (e, lb) in ent.iter().zip(&bound) {
                assert!(
                    0.0 < *lb && *lb <= *e && *e < max,
                    "causal {causal}: {lb} ≤ {e} < {max}"
                );
            }
        }
    }

    /// The recorded entropy is that of the probabilities the output is computed from: the
    /// fused op's (dropout inactive) and the separate softmax's before dropout (dropout
    /// active) both match the entropy of `softmax(q kᵀ/√d_head (+ mask))`; recording does
    /// not change the output.
    #[test]
    fn recorded_entropy_is_that_of_the_pre_dropout_probabilities() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let x = Tensor::randn(&[3, 6, 8], 0.0, 1.0, DType::F64, &mut rng);
        for causal in [true, false] {
            let attn = attention(causal, 0.5);
            let heads = |l: &LinearLayer| {
                l.forward(&x)
                    .unwrap()
                    .reshape(&[3, 6, 2, 4])
                    .unwrap()
                    .permute(&[0, 2, 1, 3])
                    .unwrap()
            };
            let p = attn
                .probs(&heads(&attn.q), &heads(&attn.k), 0.5, None)
                .unwrap();
            let want = mean_entropy_per_head(&p).unwrap();
            let close = |got: &[f64]| {
                assert_eq!(got.len(), 2);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-12, "causal {causal}: {g} vs {w}");
                }
            };
            attn.forward(&x, &mut rng).unwrap();
            close(&attn.entropy());
            attn.set_training(false);
            let fused = attn.forward(&x, &mut rng).unwrap().to_vec_f64().unwrap();
            close(&attn.entropy());
            attn.set_record(false);
            let unrecorded = attn.forward(&x, &mut rng).unwrap().to_vec_f64().unwrap();
            assert_eq!(fused, unrecorded);
            assert!(attn.entropy_bound().unwrap().is_none());
        }
    }
}
