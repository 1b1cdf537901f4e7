//! Fused scaled dot-product attention (Vaswani et al. 2017, eq. (1); PyTorch
//! `F.scaled_dot_product_attention`): for every (batch, head),
//!
//! ```text
//! S = scale · Q Kᵀ (+ causal mask),   P = softmax(S) row-wise,   O = P V
//! ```
//!
//! with the analytic backward
//!
//! ```text
//! dP = dO Vᵀ,   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = scale · dS K,
//! dK = scale · dSᵀ Q,   dV = Pᵀ dO.
//! ```
//!
//! One op instead of five (product, scale, mask, softmax, product): no pass over the
//! scores for the scale or the mask, the probabilities are the only saved intermediate,
//! and a causal op computes only the blocks of `S`, `dP` and `dS` on or below the diagonal
//! (3/4 of the products at T = 128). The output and the input gradients are written
//! straight into `[batch, T, heads, d]` storage (returned as `[batch, heads, T, d]` views),
//! so merging the heads back into `[batch, T, heads·d]` needs no copy. On request
//! ([`Tensor::scaled_dot_product_attention_with_entropy`]) the forward also takes each row's
//! entropy `−Σ_j P_ij ln P_ij` from `P` as the row is made, for the attention-entropy
//! diagnostic of Zhai et al. (ICML 2023).

use crate::cpu::{widest, SendPtr, Widen};
use crate::dtype::with_dtype;
use crate::layout::{numel_of, Layout};
use crate::ops::softmax::{softmax_grad_in_place, softmax_in_place};
use crate::{DType, Error, Float, Result, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const OP: &str = "scaled_dot_product_attention";

/// The options of [`Tensor::attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions<'a> {
    /// Query `i` attends to keys `0..=i` only.
    pub causal: bool,
    /// Factor on the scores, usually `1/√d_k`.
    pub scale: f64,
    /// Per batch entry, the number of keys that are not padding (`None`: all `S`).
    pub key_lengths: Option<&'a [usize]>,
    /// Whether to return the mean attention entropy per head.
    pub entropy: bool,
}

/// Rows (queries) per block of a causal product: the block ending at row `r1` needs key
/// columns `..r1` only. Smaller blocks skip more of the masked triangle but make the
/// products smaller: at T = 128, d = 64, fused forward + backward took 21.2 ms with 32 and
/// 19.3 ms with 64 (earlier, 23.8 ms with no blocks against 20.0 with 64; `cargo bench
/// --bench lm_step -- causal_attention/fused`, one thread).
const BLOCK: usize = 64;

/// A matrix in strided storage: element `(i, j)` at `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    off: usize,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// Matrix `(b, h)` of a rank-4 layout `[batch, heads, rows, cols]`.
    fn of(l: &Layout, b: usize, h: usize) -> Mat {
        let s = l.strides();
        Mat {
            off: l.offset() + b * s[0] + h * s[1],
            rs: s[2],
            cs: s[3],
        }
    }

    /// Matrix `(b, h)` of dense `[batch, rows, heads, cols]` storage.
    fn heads_inner(rows: usize, heads: usize, cols: usize, b: usize, h: usize) -> Mat {
        Mat {
            off: (b * rows * heads + h) * cols,
            rs: heads * cols,
            cs: 1,
        }
    }

    /// The submatrix starting at row `r`, column `c`.
    fn at(self, r: usize, c: usize) -> Mat {
        Mat {
            off: self.off + r * self.rs + c * self.cs,
            ..self
        }
    }

    /// The transpose (a view: strides swapped).
    fn t(self) -> Mat {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `C ← alpha · A·B` for `A` `m×k` and `B` `k×n` (`C` overwritten).
///
/// # Safety
/// The matrices must lie inside their buffers, and `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: (*const T, Mat),
    b: (*const T, Mat),
    c: (*mut T, Mat),
) {
    let (a, ma) = a;
    let (b, mb) = b;
    let (c, mc) = c;
    T::gemm(
        m,
        k,
        n,
        alpha,
        a.add(ma.off),
        ma.rs as isize,
        ma.cs as isize,
        b.add(mb.off),
        mb.rs as isize,
        mb.cs as isize,
        T::zero(),
        c.add(mc.off),
        mc.rs as isize,
        mc.cs as isize,
    )
}

/// Shapes of one attention call: `q` `[b, h, t, dk]`, `k` `[b, h, s, dk]`, `v`
/// `[b, h, s, dv]`.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    t: usize,
    s: usize,
    dk: usize,
    dv: usize,
    causal: bool,
    /// Keys of the current batch entry that are not padding (`s` without key lengths).
    keys: usize,
}

impl Dims {
    /// These dimensions for batch entry `b`: its first `key_lengths[b]` keys visible.
    fn entry(self, b: usize, key_lengths: Option<&[usize]>) -> Dims {
        Dims {
            keys: key_lengths.map_or(self.s, |l| l[b]),
            ..self
        }
    }

    /// Key columns that query row `i` attends to: `..i+1` when causal (top-left aligned,
    /// as PyTorch's `is_causal`), all `s` otherwise; never the padding keys past `keys`.
    fn visible(&self, i: usize) -> usize {
        if self.causal {
            (i + 1).min(self.keys)
        } else {
            self.keys
        }
    }

    /// Query row blocks `(r0, r1)` with the key columns `..cols` the block needs.
    fn row_blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let step = if self.causal { BLOCK } else { self.t.max(1) };
        (0..self.t).step_by(step).map(move |r0| {
            let r1 = (r0 + step).min(self.t);
            (r0, r1, self.visible(r1 - 1))
        })
    }

    /// Key column blocks `(c0, c1)` with the first query row `from` that sees any of them.
    fn col_blocks(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let step = if self.causal { BLOCK } else { self.s.max(1) };
        (0..self.s).step_by(step).map(move |c0| {
            let from = if self.causal { c0.min(self.t) } else { 0 };
            (c0, (c0 + step).min(self.s), from)
        })
    }
}

/// Softmax of query rows `r0..r1` of one pair's scores `pp` (`t × s`, row-major, the
/// scores of each row's visible keys already written), in place; the masked rest of each
/// row is set to 0. Run through [`widest`], so the exponentials use the CPU's full vector
/// width.
struct SoftmaxRows<'a, T> {
    d: Dims,
    pp: &'a mut [MaybeUninit<T>],
    rows: (usize, usize),
}

impl<T: Float> Widen for SoftmaxRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for i in self.rows.0..self.rows.1 {
            let row = &mut self.pp[i * self.d.s..(i + 1) * self.d.s];
            let (seen, masked) = row.split_at_mut(self.d.visible(i));
            masked.iter_mut().for_each(|v| {
                v.write(T::zero());
            });
            // SAFETY: the scores of the visible keys were written by the product before this.
            softmax_in_place(unsafe { assume_init(seen) });
        }
    }
}

/// Softmax backward of query rows `r0..r1` of one pair, in place on `ds` (holding `dP`
/// for each row's visible keys): `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, and 0 for the masked
/// rest of each row. Run through [`widest`], as [`SoftmaxRows`].
struct SoftmaxGradRows<'a, T> {
    d: Dims,
    pp: &'a [T],
    ds: &'a mut [T],
    rows: (usize, usize),
}

impl<T: Float> Widen for SoftmaxGradRows<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let s = self.d.s;
        for i in self.rows.0..self.rows.1 {
            let n = self.d.visible(i);
            let row = &mut self.ds[i * s..(i + 1) * s];
            softmax_grad_in_place(&self.pp[i * s..i * s + n], &mut row[..n]);
            row[n..].fill(T::zero());
        }
    }
}

/// `&mut [T]` over elements already written.
///
/// # Safety
/// Every element of `x` must be initialized.
unsafe fn assume_init<T>(x: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and the caller guarantees initialization.
    unsafe { &mut *(x as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `−Σ p ln p` of one row of probabilities, in `f64` and in order; terms with `p = 0`
/// count 0.
fn row_entropy<T: Float>(row: &[T]) -> f64 {
    row.iter()
        .map(|&p| p.to_f64_lossless())
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum()
}

/// Forward for every (batch, head): returns `p` (`[b, h, t, s]`, zero above the causal
/// diagonal and at padding keys), `O` as dense `[b, t, h, dv]` and, per pair, the sum of
/// its rows' entropies ([`row_entropy`] of each row's visible keys, rows in order; with
/// `key_lengths`, only the rows below the entry's length) when `entropy` (0 for every pair
/// otherwise). Neither `p` nor `O` is zero-filled first: the products and the softmax
/// write every element.
#[allow(clippy::too_many_arguments)]
fn forward<T: Float>(
    d: Dims,
    key_lengths: Option<&[usize]>,
    scale: T,
    (q, lq): (&[T], &Layout),
    (k, lk): (&[T], &Layout),
    (v, lv): (&[T], &Layout),
    entropy: bool,
) -> (Vec<T>, Vec<T>, Vec<f64>) {
    let (np, no) = (d.b * d.h * d.t * d.s, d.b * d.t * d.h * d.dv);
    let (mut p, mut o) = (Vec::with_capacity(np), Vec::<T>::with_capacity(no));
    let out = SendPtr(o.as_mut_ptr());
    let pair_entropy = p.spare_capacity_mut()[..np]
        .par_chunks_mut((d.t * d.s).max(1))
        .enumerate()
        .map(|(pair, pp)| {
            #[allow(clippy::redundant_locals)]
            let out = out;
            let (b, h) = (pair / d.h, pair % d.h);
            let d = d.entry(b, key_lengths);
            let (mq, mk, mv) = (Mat::of(lq, b, h), Mat::of(lk, b, h), Mat::of(lv, b, h));
            let mp = Mat {
                off: 0,
                rs: d.s,
                cs: 1,
            };
            let mo = Mat::heads_inner(d.t, d.h, d.dv, b, h);
            let mut ent = 0.0;
            for (r0, r1, cols) in d.row_blocks() {
                // SAFETY: every matrix lies in its buffer (layouts were validated when the
                // tensors were built; `pp` is this pair's t×s block), and each pair writes
                // only its own block of `p` and its own rows/columns of `o`. The product
                // writes the `cols` columns of these rows (all of them, even with
                // `d_k = 0`), which cover every visible key.
                unsafe {
                    gemm(
                        r1 - r0,
                        d.dk,
                        cols,
                        scale,
                        (q.as_ptr(), mq.at(r0, 0)),
                        (k.as_ptr(), mk.t()),
                        (pp.as_mut_ptr() as *mut T, mp.at(r0, 0)),
                    );
                }
                widest(SoftmaxRows {
                    d,
                    pp: &mut *pp,
                    rows: (r0, r1),
                });
                if entropy {
                    // SAFETY: the rows `r0..r1` of `pp` were all written by the softmax.
                    let rows = unsafe { assume_init(&mut pp[r0 * d.s..r1 * d.s]) };
                    let counted = if key_lengths.is_some() { d.keys } else { d.t };
                    for (i, row) in (r0..r1.min(counted)).zip(rows.chunks(d.s)) {
                        ent += row_entropy(&row[..d.visible(i)]);
                    }
                }
                // SAFETY: as above; the rows `r0..r1` of `pp` are now all written.
                unsafe {
                    gemm(
                        r1 - r0,
                        cols,
                        d.dv,
                        T::one(),
                        (pp.as_ptr() as *const T, mp.at(r0, 0)),
                        (v.as_ptr(), mv),
                        (out.0, mo.at(r0, 0)),
                    );
                }
            }
            ent
        })
        .collect();
    // SAFETY: the row blocks cover every row of every pair, so all `np` probabilities and
    // all `no` outputs were written above.
    unsafe {
        p.set_len(np);
        o.set_len(no);
    }
    (p, o, pair_entropy)
}

/// Backward for every (batch, head) given `dO` (`g`): `dQ`, `dK`, `dV` as dense
/// `[b, t, h, dk]`, `[b, s, h, dk]`, `[b, s, h, dv]`, none zero-filled first (every row
/// and column block is written by its product, with zeros where it has no terms).
#[allow(clippy::too_many_arguments)]
fn backward<T: Float>(
    d: Dims,
    key_lengths: Option<&[usize]>,
    scale: T,
    (q, lq): (&[T], &Layout),
    (k, lk): (&[T], &Layout),
    (v, lv): (&[T], &Layout),
    p: &[T],
    (g, lg): (&[T], &Layout),
) -> [Vec<T>; 3] {
    let (nq, nk, nv) = (
        d.b * d.t * d.h * d.dk,
        d.b * d.s * d.h * d.dk,
        d.b * d.s * d.h * d.dv,
    );
    let (mut dq, mut dk, mut dv) = (
        Vec::<T>::with_capacity(nq),
        Vec::with_capacity(nk),
        Vec::with_capacity(nv),
    );
    let (pq, pk, pv) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    // `dS` scratch, one per rayon task and reused across its pairs: every row is rewritten
    // for each pair (products, then the softmax backward with zeros in the masked part),
    // so the products below may read whole blocks.
    let scratch = || vec![T::zero(); d.t * d.s];
    (0..d.b * d.h)
        .into_par_iter()
        .for_each_init(scratch, |ds, pair| {
            #[allow(clippy::redundant_locals)]
            let (pq, pk, pv) = (pq, pk, pv);
            let (b, h) = (pair / d.h, pair % d.h);
            let d = d.entry(b, key_lengths);
            let (mq, mk, mv, mg) = (
                Mat::of(lq, b, h),
                Mat::of(lk, b, h),
                Mat::of(lv, b, h),
                Mat::of(lg, b, h),
            );
            let pp = &p[pair * d.t * d.s..(pair + 1) * d.t * d.s];
            let mp = Mat {
                off: 0,
                rs: d.s,
                cs: 1,
            };
            for (r0, r1, cols) in d.row_blocks() {
                // SAFETY: as in `forward`; `ds` is this task's own scratch and each pair
                // writes only its own rows/columns of dq, dk, dv.
                unsafe {
                    gemm(
                        r1 - r0,
                        d.dv,
                        cols,
                        T::one(),
                        (g.as_ptr(), mg.at(r0, 0)),
                        (v.as_ptr(), mv.t()),
                        (ds.as_mut_ptr(), mp.at(r0, 0)),
                    );
                }
                widest(SoftmaxGradRows {
                    d,
                    pp,
                    ds: &mut ds[..],
                    rows: (r0, r1),
                });
                unsafe {
                    gemm(
                        r1 - r0,
                        cols,
                        d.dk,
                        scale,
                        (ds.as_ptr(), mp.at(r0, 0)),
                        (k.as_ptr(), mk),
                        (pq.0, Mat::heads_inner(d.t, d.h, d.dk, b, h).at(r0, 0)),
                    );
                }
            }
            for (c0, c1, from) in d.col_blocks() {
                let rows = d.t - from;
                unsafe {
                    gemm(
                        c1 - c0,
                        rows,
                        d.dk,
                        scale,
                        (ds.as_ptr(), mp.at(from, c0).t()),
                        (q.as_ptr(), mq.at(from, 0)),
                        (pk.0, Mat::heads_inner(d.s, d.h, d.dk, b, h).at(c0, 0)),
                    );
                    gemm(
                        c1 - c0,
                        rows,
                        d.dv,
                        T::one(),
                        (pp.as_ptr(), mp.at(from, c0).t()),
                        (g.as_ptr(), mg.at(from, 0)),
                        (pv.0, Mat::heads_inner(d.s, d.h, d.dv, b, h).at(c0, 0)),
                    );
                }
            }
        });
    // SAFETY: the row blocks cover every query row (dQ) and the column blocks every key
    // row (dK, dV); a block without terms (`rows = 0`) is written as zeros by `gemm`.
    unsafe {
        dq.set_len(nq);
        dk.set_len(nk);
        dv.set_len(nv);
    }
    [dq, dk, dv]
}

/// Dense `[b, rows, h, cols]` data viewed as `[b, h, rows, cols]`.
fn heads_view<T: Float>(
    data: Vec<T>,
    b: usize,
    rows: usize,
    h: usize,
    cols: usize,
) -> Result<Tensor> {
    Tensor::from_vec(data, &[b, rows, h, cols])?.permute(&[0, 2, 1, 3])
}

impl Tensor {
    /// Scaled dot-product attention `softmax(scale · Q Kᵀ + mask) V` as one fused op, with
    /// `self` the queries `[batch, heads, T, d_k]`, `k` the keys `[batch, heads, S, d_k]` and
    /// `v` the values `[batch, heads, S, d_v]`; returns `[batch, heads, T, d_v]`. With
    /// `causal`, query `i` attends to keys `0..=i` only (PyTorch's `is_causal`, top-left
    /// aligned). `scale` is usually `1/√d_k`. Strided inputs (e.g. heads split by
    /// `reshape` + `permute`) are used in place; the result is a permuted view of dense
    /// `[batch, T, heads, d_v]` storage, so `permute(&[0, 2, 1, 3])` + `reshape` merges the
    /// heads without a copy. Same values as `matmul`, `mul_scalar`, a `-inf` mask,
    /// `softmax` and `matmul`, up to rounding (see the module docs for the math).
    ///
    /// Errors: [`Error::InvalidArgument`] unless all three are rank 4, for `S = 0` with a
    /// query (no key to attend to), for a `scale` not finite in the dtype, or for
    /// probabilities `[batch, heads, T, S]` too large to allocate; [`Error::ShapeMismatch`]
    /// unless batch and head counts are equal, `k` and `v` have the same `S`, and `q` and `k`
    /// the same `d_k`; dtype and device mismatches as for other binary ops.
    pub fn scaled_dot_product_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        scale: f64,
    ) -> Result<Tensor> {
        let opts = AttentionOptions {
            causal,
            scale,
            key_lengths: None,
            entropy: false,
        };
        Ok(self.attention(k, v, &opts)?.0)
    }

    /// [`Tensor::scaled_dot_product_attention`] that also returns the mean attention
    /// entropy per head (`heads` values, in nats): `−Σ_j P_ij ln P_ij` of every probability
    /// row the output was computed from (masked keys, with `P = 0`, count 0), averaged over
    /// batch and query rows; 0 for every head when there is no row. Taken from the op's own
    /// `P` inside its row loop, while each row is still in cache: no second product and no
    /// extra pass, only one `ln` per visible probability (the entropy diagnostic of Zhai et
    /// al., ICML 2023, section 3). Summed in `f64` in a fixed order (each (batch, head)
    /// adds its rows in order within one task, then each head adds its batch entries in
    /// order), so the values are the same bits at any thread count. The output and its
    /// gradients are exactly those of `scaled_dot_product_attention`. Errors as that.
    pub fn scaled_dot_product_attention_with_entropy(
        &self,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        scale: f64,
    ) -> Result<(Tensor, Vec<f64>)> {
        let opts = AttentionOptions {
            causal,
            scale,
            key_lengths: None,
            entropy: true,
        };
        self.attention(k, v, &opts)
    }

    /// The fused attention of [`Tensor::scaled_dot_product_attention`] with every option:
    /// `causal` and `scale` as there; `key_lengths` (one per batch entry, each in `1..=S`)
    /// hides the padding keys `key_lengths[b]..S` of entry `b` from every query (PyTorch's
    /// `key_padding_mask`; their probabilities are 0 and their `dK`, `dV` 0); with
    /// `entropy`, also the mean attention entropy per head, as
    /// [`Tensor::scaled_dot_product_attention_with_entropy`] but averaged, with
    /// `key_lengths`, over the query rows `i < key_lengths[b]` only (self-attention over
    /// padded sequences: the padding queries are not positions of the sequence). Returns
    /// `[batch, heads, T, d_v]` and the entropies (empty without `entropy`).
    ///
    /// Errors as [`Tensor::scaled_dot_product_attention`], and with
    /// [`Error::InvalidArgument`] when `key_lengths` does not hold `batch` lengths in
    /// `1..=S`.
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Vec<f64>)> {
        let AttentionOptions {
            causal,
            scale,
            key_lengths,
            entropy,
        } = *opts;
        self.check_same(OP, k)?;
        self.check_same(OP, v)?;
        let mismatch = |other: &Tensor| Error::ShapeMismatch {
            op: OP,
            lhs: self.shape().to_vec(),
            rhs: other.shape().to_vec(),
        };
        let (&[b, h, t, dk], &[kb, kh, s, kd], &[vb, vh, vs, dv]) =
            (self.shape(), k.shape(), v.shape())
        else {
            return Err(Error::invalid(
                OP,
                format!(
                    "q, k and v must be rank 4 [batch, heads, T, d], got {:?}, {:?} and {:?}",
                    self.shape(),
                    k.shape(),
                    v.shape()
                ),
            ));
        };
        if (kb, kh, kd) != (b, h, dk) {
            return Err(mismatch(k));
        }
        if (vb, vh, vs) != (b, h, s) {
            return Err(mismatch(v));
        }
        if s == 0 && b * h * t > 0 {
            return Err(Error::invalid(
                OP,
                format!("queries {:?} have no keys (S = 0)", self.shape()),
            ));
        }
        let finite = match self.dtype() {
            DType::F32 => (scale as f32).is_finite(),
            DType::F64 => scale.is_finite(),
        };
        if !finite {
            return Err(Error::invalid(
                OP,
                format!("scale must be finite in {:?}, got {scale}", self.dtype()),
            ));
        }
        if let Some(lens) = key_lengths {
            if lens.len() != b || lens.iter().any(|&l| l == 0 || l > s) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "key_lengths must hold {b} lengths (one per batch entry) in 1..={s}, \
                         got {lens:?}"
                    ),
                ));
            }
        }
        // The probabilities are [b, h, t, s] whatever d is: refuse what cannot be allocated.
        numel_of(OP, &[b, h, t, s])?;
        let d = Dims {
            b,
            h,
            t,
            s,
            dk,
            dv,
            causal,
            keys: s,
        };
        let (p, out, pair_entropy) = with_dtype!(self.dtype(), T => {
            let sc = T::from_f64_lossy(scale);
            let (p, o, e) = self.with_cpu::<T, _>(OP, |qd, lq| {
                k.with_cpu::<T, _>(OP, |kd, lk| {
                    v.with_cpu::<T, _>(OP, |vd, lv| {
                        forward(d, key_lengths, sc, (qd, lq), (kd, lk), (vd, lv), entropy)
                    })
                })
            })???;
            (Tensor::from_vec(p, &[b, h, t, s])?, heads_view(o, b, t, h, dv)?, e)
        });
        let head_entropy = if entropy {
            // Pairs in order, so each head adds its batch entries in order.
            let mut sums = vec![0.0; h];
            for (pair, e) in pair_entropy.iter().enumerate() {
                sums[pair % h] += e;
            }
            let rows = key_lengths.map_or(b * t, |l| l.iter().map(|&n| n.min(t)).sum());
            sums.into_iter().map(|e| e / rows.max(1) as f64).collect()
        } else {
            Vec::new()
        };
        let (q, kk, vv) = (self.detach(), k.detach(), v.detach());
        let needs = [self.requires_grad(), k.requires_grad(), v.requires_grad()];
        let key_lengths = key_lengths.map(<[usize]>::to_vec);
        let out = out.record(&[self, k, v], OP, move |g| {
            let grads = with_dtype!(g.dtype(), T => {
                let sc = T::from_f64_lossy(scale);
                let [gq, gk, gv] = q.with_cpu::<T, _>(OP, |qd, lq| {
                    kk.with_cpu::<T, _>(OP, |kd, lk| {
                        vv.with_cpu::<T, _>(OP, |vd, lv| {
                            p.with_cpu::<T, _>(OP, |pd, _| {
                                g.with_cpu::<T, _>(OP, |gd, lg| {
                                    backward(d, key_lengths.as_deref(), sc, (qd, lq), (kd, lk), (vd, lv), pd, (gd, lg))
                                })
                            })
                        })
                    })
                })?????;
                [
                    heads_view(gq, b, t, h, dk)?,
                    heads_view(gk, b, s, h, dk)?,
                    heads_view(gv, b, s, h, dv)?,
                ]
            });
            Ok(grads
                .into_iter()
                .zip(needs)
                .map(|(g, need)| need.then_some(g))
                .collect())
        });
        Ok((out, head_entropy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{run_as, wide_copies, WideCopy};
    use rand::{Rng, SeedableRng};

    /// The softmax rows of the attention, forward and backward, give the same bits through
    /// every copy this CPU can run, on causal rows of every visible length 1…37 (so every
    /// vector tail), and the forward rows are probabilities with zeros past the diagonal.
    #[test]
    fn softmax_rows_match_the_baseline_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 37;
        let d = Dims {
            b: 1,
            h: 1,
            t: n,
            s: n,
            dk: 1,
            dv: 1,
            causal: true,
            keys: n,
        };
        let scores: Vec<f32> = (0..n * n).map(|_| rng.gen_range(-30.0..30.0)).collect();
        let dp: Vec<f32> = (0..n * n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let rows = |copy| {
            let mut pp: Vec<MaybeUninit<f32>> =
                scores.iter().map(|&v| MaybeUninit::new(v)).collect();
            let k = SoftmaxRows {
                d,
                pp: &mut pp,
                rows: (0, n),
            };
            run_as(copy, k);
            // SAFETY: every element was initialized above.
            let p: Vec<f32> = pp.iter().map(|v| unsafe { v.assume_init() }).collect();
            let mut ds = dp.clone();
            let k = SoftmaxGradRows {
                d,
                pp: &p,
                ds: &mut ds,
                rows: (0, n),
            };
            run_as(copy, k);
            (p, ds)
        };
        let (p, ds) = rows(WideCopy::Baseline);
        for i in 0..n {
            let row = &p[i * n..(i + 1) * n];
            let total: f32 = row[..=i].iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "row {i} sums to {total}");
            assert!(
                row[i + 1..].iter().all(|&v| v == 0.0),
                "row {i} past the diagonal"
            );
            assert!(ds[i * n + i + 1..(i + 1) * n].iter().all(|&v| v == 0.0));
        }
        for copy in wide_copies() {
            let (pc, dsc) = rows(copy);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&pc), bits(&p), "{copy:?} probabilities");
            assert_eq!(bits(&dsc), bits(&ds), "{copy:?} dS");
        }
    }
}
