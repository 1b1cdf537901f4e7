//! Matrix multiplication: 2-D and batched with broadcast batch dims, on strided views
//! without copies (the `gemm` crate takes row and column strides).
//!
//! Parallelism is one level, through rayon: across the batch when it is large enough,
//! otherwise across row (or, for a wide result, column) blocks of one product;
//! `gemm` itself runs single-threaded, and every call sums at most [`K_CHUNK`] terms of `k`
//! in one pass, so the result of every product is the same whatever the thread count.

use crate::cpu::{widest, SendPtr, Widen};
use crate::dtype::with_dtype;
use crate::layout::{broadcast_shapes, Layout};
use crate::ops::linear::Activation;
use crate::ops::unary::{gelu_tanh, gelu_tanh_and_grad, relu, relu_and_grad};
use crate::{Error, Float, Result, Tensor};
use rayon::prelude::*;

/// Products with fewer multiply-adds than this run on the calling thread.
const PAR_MIN_FLOPS: usize = 1 << 18;

/// The longest stretch of `k` handed to one `gemm` call; longer products accumulate chunks
/// in order. `gemm` sums at most 512 terms of `k` per pass, but how it groups a longer `k`
/// depends on the block's `m` and `n` (and the CPU's caches): without the chunks, a product
/// split into one block per thread would round differently for each thread count.
const K_CHUNK: usize = 512;

impl Tensor {
    /// Matrix product `self @ other` for `self` `[..., m, k]` and `other` `[..., k, n]`,
    /// giving `[..., m, n]`; batch dims broadcast (NumPy rules). Transposed or otherwise
    /// strided inputs are used in place.
    ///
    /// Errors with [`Error::ShapeMismatch`] when a rank is below 2, inner dims differ or
    /// batch dims do not broadcast.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let out = self.matmul_scaled(other, 1.0, None)?;
        let (a, b) = (self.detach(), other.detach());
        let (rga, rgb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record(&[self, other], "matmul", move |g| {
            // dA = g·Bᵀ, dB = Aᵀ·g; the engine sums broadcast batch dims back.
            Ok(vec![
                rga.then(|| g.matmul(&b.t()?)).transpose()?,
                rgb.then(|| rhs_grad(&a, &b, g)).transpose()?,
            ])
        }))
    }

    /// `alpha · (self @ other) + bias` with the shapes and errors of [`Tensor::matmul`],
    /// computed in the product kernel (no extra pass over the output) and not recorded: for
    /// fused ops that supply their own backward. `bias`, if any, is `[n]` (checked by the
    /// caller) and added to every row.
    pub(crate) fn matmul_scaled(
        &self,
        other: &Tensor,
        alpha: f64,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self
            .matmul_act(other, alpha, bias, Activation::Identity, false)?
            .0)
    }

    /// `act(alpha · (self @ other) + bias)` as [`Tensor::matmul_scaled`], the activation
    /// applied to each block of the result while it is still in cache; with `with_grad`, also
    /// `act'` at the same points (a tensor of the output's shape), for the caller's backward.
    pub(crate) fn matmul_act(
        &self,
        other: &Tensor,
        alpha: f64,
        bias: Option<&Tensor>,
        act: Activation,
        with_grad: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_same("matmul", other)?;
        let mismatch = || Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().to_vec(),
            rhs: other.shape().to_vec(),
        };
        let (ra, rb) = (self.rank(), other.rank());
        if ra < 2 || rb < 2 {
            return Err(mismatch());
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (other.shape()[rb - 2], other.shape()[rb - 1]);
        if k != k2 {
            return Err(mismatch());
        }
        let batch = broadcast_shapes("matmul", &self.shape()[..ra - 2], &other.shape()[..rb - 2])?;
        let mut a_shape = batch.to_vec();
        a_shape.extend([m, k]);
        let mut b_shape = batch.to_vec();
        b_shape.extend([k, n]);
        let mut out_shape = batch.to_vec();
        out_shape.extend([m, n]);
        crate::layout::numel_of("matmul", &out_shape)?;
        let la = self.layout().broadcast_to("matmul", &a_shape)?;
        let lb = other.layout().broadcast_to("matmul", &b_shape)?;
        with_dtype!(self.dtype(), T => {
            let bias = bias.map(|b| b.to_vec::<T>()).transpose()?;
            let with_grad = with_grad && act != Activation::Identity;
            let (v, dv) = self.with_cpu::<T, _>("matmul", |a, _| {
                other.with_cpu::<T, _>("matmul", |b, _| {
                    let epilogue = (bias.as_deref(), act, with_grad);
                    gemm_batched(a, &la, b, &lb, (m, k, n), T::from_f64_lossy(alpha), epilogue)
                })
            })??;
            let dv = dv.map(|d| Tensor::from_vec(d, &out_shape)).transpose()?;
            Ok((Tensor::from_vec(v, &out_shape)?, dv))
        })
    }
}

/// `dB = Aᵀ·g` for `C = A·B`, computed so that it needs no reduction or copy afterwards:
/// - a 2-D `B` shared by a batched `A` gets `Σ_batch A[b]ᵀ·g[b]` as one product over the
///   flattened batch rows, not a batch of products summed by the engine;
/// - a column-major `B` (a transposed view, as `Wᵀ` in `x @ Wᵀ`) gets `(gᵀ·A)ᵀ`, the same
///   numbers laid out so that the gradient reaching `W` through the transpose is dense
///   and can become `W`'s grad without a copy.
fn rhs_grad(a: &Tensor, b: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (k, n) = (b.shape()[b.rank() - 2], b.shape()[b.rank() - 1]);
    let (a, g) = if b.rank() == 2 && a.rank() > 2 && k > 0 && n > 0 {
        (
            a.reshape(&[a.numel() / k, k])?,
            g.reshape(&[g.numel() / n, n])?,
        )
    } else {
        (a.clone(), g.clone())
    };
    if column_major(b) {
        g.t()?.matmul(&a)?.t()
    } else {
        a.t()?.matmul(&g)
    }
}

/// Whether the last two dims of `t` are laid out column-major: unit stride down the rows
/// and not along them.
fn column_major(t: &Tensor) -> bool {
    let s = t.layout().strides();
    let r = s.len();
    s[r - 2] == 1 && s[r - 1] != 1
}

/// The epilogue of a block of a product's result, `rows × cols` at `c` with row stride
/// `n`: `+ bias` (the block's columns of it), then the activation, in place; with `dy`, the
/// activation's derivative goes to `dy` at the same offsets. Run through [`widest`].
struct BlockEpilogue<'a, T> {
    c: *mut T,
    dy: Option<*mut T>,
    n: usize,
    rows: usize,
    cols: usize,
    bias: Option<&'a [T]>,
    act: Activation,
}

impl<T: Float> Widen for BlockEpilogue<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for row in 0..self.rows {
            // SAFETY: the block lies in the result (and `dy`, of the same size), and no other
            // thread touches it (see `gemm_batched`).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(self.c.add(row * self.n), self.cols) };
            if let Some(bias) = self.bias {
                for (y, &b) in dst.iter_mut().zip(bias) {
                    *y += b;
                }
            }
            match (self.act, self.dy) {
                (Activation::Identity, _) => {}
                (Activation::Gelu, None) => dst.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
                (Activation::Gelu, Some(dy)) => {
                    // SAFETY: as above.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(dy.add(row * self.n), self.cols) };
                    for (v, dv) in dst.iter_mut().zip(d) {
                        (*v, *dv) = gelu_tanh_and_grad(*v);
                    }
                }
                (Activation::Relu, None) => dst.iter_mut().for_each(|v| *v = relu(*v)),
                (Activation::Relu, Some(dy)) => {
                    // SAFETY: as above.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(dy.add(row * self.n), self.cols) };
                    for (v, dv) in dst.iter_mut().zip(d) {
                        (*v, *dv) = relu_and_grad(*v);
                    }
                }
            }
        }
    }
}

/// `C[b] = act(alpha·A[b]·B[b] + bias on every row)` for every batch index, and with
/// `with_grad` also `act'` at the same points; `la`, `lb` are broadcast to the batch shape,
/// and `bias` has `n` elements. The epilogue (bias, activation) runs on each block right
/// after its product, while the block is in cache.
fn gemm_batched<T: Float>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    (m, k, n): (usize, usize, usize),
    alpha: T,
    (bias, act, with_grad): (Option<&[T]>, Activation, bool),
) -> (Vec<T>, Option<Vec<T>>) {
    let r = la.rank();
    let n_batch: usize = la.shape()[..r - 2].iter().product();
    let len = n_batch * m * n;
    // Left uninitialized: every element is written by the products or the zero fill below.
    let mut dy: Option<Vec<T>> = with_grad.then(|| Vec::with_capacity(len));
    let dyp = dy.as_mut().map(|d| SendPtr(d.as_mut_ptr()));
    let epilogue = |c: *mut T, off: usize, rows: usize, cols: usize, c0: usize| {
        // SAFETY (of the offsets): `off` is the block's first element in `out` (and `dy`).
        widest(BlockEpilogue {
            c: unsafe { c.add(off) },
            dy: dyp.map(|p| unsafe { p.0.add(off) }),
            n,
            rows,
            cols,
            bias: bias.map(|b| &b[c0..c0 + cols]),
            act,
        })
    };
    let finish = |out: Vec<T>, dy: Option<Vec<T>>| {
        // SAFETY: every element of `dy` was written by the epilogues, and `len <= capacity`.
        let dy = dy.map(|mut d| {
            unsafe { d.set_len(len) };
            d
        });
        (out, dy)
    };
    if len == 0 || k == 0 {
        let mut out = crate::cpu::zeros(len);
        if let Some(rows) = len.checked_div(n) {
            epilogue(out.as_mut_ptr(), 0, rows, n, 0);
        }
        return finish(out, dy);
    }
    // Left uninitialized: with beta = 0, `gemm` is told not to read C, and the blocks below
    // tile every product's `m × n` result.
    let mut out: Vec<T> = Vec::with_capacity(len);
    let batch_of = |l: &Layout| {
        Layout::new(
            l.shape()[..r - 2].into(),
            l.strides()[..r - 2].into(),
            l.offset(),
        )
    };
    let a_off: Vec<usize> = batch_of(la).offsets().collect();
    let b_off: Vec<usize> = batch_of(lb).offsets().collect();
    let (rsa, csa) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
    let (rsb, csb) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
    let threads = rayon::current_num_threads();
    let flops = m * n * k;
    let c = SendPtr(out.as_mut_ptr());
    // An A read along k with a stride (a transposed view, as gᵀ in a weight gradient) is
    // read in place in column tiles that `gemm` does not copy into its panel layout.
    let tile = if csa == 1 { None } else { in_place_cols::<T>() };
    // The block `rows × cols` of product `i` into its slot of `out`.
    let run = |i: usize, (r0, r1): (usize, usize), (c0, c1): (usize, usize)| {
        // Capture the whole `SendPtr` (a closure would otherwise capture only its raw,
        // non-`Send` field).
        #[allow(clippy::redundant_locals)]
        let c = c;
        for (t0, t1) in spans(c0, c1, tile.unwrap_or(c1 - c0)) {
            let c_off = i * m * n + r0 * n + t0;
            // SAFETY: offsets index inside `a`/`b` (layouts were validated against their
            // storage when built); each (batch, block) writes, then adds the bias to, a
            // disjoint part of `out`.
            unsafe {
                // Chunks of at most K_CHUNK along k, accumulated in order: see K_CHUNK.
                for k0 in (0..k).step_by(K_CHUNK) {
                    T::gemm(
                        r1 - r0,
                        (k - k0).min(K_CHUNK),
                        t1 - t0,
                        alpha,
                        a.as_ptr()
                            .add(a_off[i] + r0 * rsa as usize + k0 * csa as usize),
                        rsa,
                        csa,
                        b.as_ptr()
                            .add(b_off[i] + t0 * csb as usize + k0 * rsb as usize),
                        rsb,
                        csb,
                        if k0 == 0 { T::zero() } else { T::one() },
                        c.0.add(c_off),
                        n as isize,
                        1,
                    );
                }
            }
            // The bias and the activation, on the tile while it is still in cache.
            if bias.is_some() || act != Activation::Identity {
                epilogue(c.0, c_off, r1 - r0, t1 - t0, t0);
            }
        }
    };
    if threads == 1 || flops * n_batch < PAR_MIN_FLOPS {
        (0..n_batch).for_each(|i| run(i, (0, m), (0, n)));
    } else if n_batch >= threads || m == 1 || n == 1 {
        // A product with a single row or column stays whole: `gemm` computes it with a
        // vector kernel whose rounding depends on where a block starts.
        (0..n_batch)
            .into_par_iter()
            .for_each(|i| run(i, (0, m), (0, n)));
    } else {
        // Few large products: give every thread one block (a multiple of 8) of the longer
        // side of the result. Each block packs all of the other operand, so splitting the
        // longer side, into as few blocks as there are threads, packs the least (two blocks
        // per thread made the lm step about 5% slower at 2 threads).
        let (len, whole) = if m >= n { (m, (0, n)) } else { (n, (0, m)) };
        let step = len.div_ceil(threads).next_multiple_of(8).max(8);
        let parts = spans(0, len, step);
        let tasks: Vec<(usize, (usize, usize))> = (0..n_batch)
            .flat_map(|i| parts.iter().map(move |&part| (i, part)))
            .collect();
        tasks.into_par_iter().for_each(|(i, part)| {
            if m >= n {
                run(i, part, whole)
            } else {
                run(i, whole, part)
            }
        });
    }
    // SAFETY: the capacity is `len`, and every element was written by `run` above.
    unsafe { out.set_len(len) };
    finish(out, dy)
}

/// `lo..hi` cut into spans of `step` (a multiple of 8); a last span shorter than 8 joins the
/// one before it, so no span of a longer range has a single row or column (`gemm` gives
/// those a separate kernel, which rounds differently).
fn spans(lo: usize, hi: usize, step: usize) -> Vec<(usize, usize)> {
    let mut starts: Vec<usize> = (lo..hi).step_by(step.max(1)).collect();
    if starts.len() > 1 && hi - starts[starts.len() - 1] < 8 {
        starts.pop();
    }
    let ends = starts.iter().skip(1).copied().chain([hi]);
    starts.iter().copied().zip(ends).collect()
}

/// The widest column tile of a product for which `gemm` reads a strided A in place rather
/// than copying it into its panel layout for every call: that copy happens when the
/// transposed problem it solves (C row-major) has more than two register tiles of rows,
/// `2·MR` with MR = 4 AVX-512 vectors. In place is faster there: a weight-gradient product
/// `gᵀ·x` of `[2048, 1024]` and `[2048, 256]` runs at 113 against 98 GFLOP/s in 128-column
/// tiles (one thread, AVX-512). `None` (no tiles) elsewhere, where it is not measured.
fn in_place_cols<T>() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return Some(2 * 4 * 64 / std::mem::size_of::<T>());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{on_threads, run_as, wide_copies, WideCopy};
    use crate::DType;
    use rand::{Rng, SeedableRng};

    /// The product epilogue (bias, then GELU or ReLU with its derivative) gives the same bits
    /// through every copy this CPU can run, on a block narrower than its row stride with a
    /// width that leaves vector tails.
    #[test]
    fn epilogue_copies_match_the_baseline_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (rows, n, cols, c0) = (5, 40, 37, 2);
        let c: Vec<f32> = (0..rows * n).map(|_| rng.gen_range(-12.0..12.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let run = |copy, with_grad: bool, act| {
            let (mut y, mut dy) = (c.clone(), vec![0.0f32; rows * n]);
            let k = BlockEpilogue {
                c: y[c0..].as_mut_ptr(),
                dy: with_grad.then(|| dy[c0..].as_mut_ptr()),
                n,
                rows,
                cols,
                bias: Some(&bias[c0..c0 + cols]),
                act,
            };
            run_as(copy, k);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&y), bits(&dy))
        };
        for act in [Activation::Gelu, Activation::Relu] {
            for with_grad in [false, true] {
                let base = run(WideCopy::Baseline, with_grad, act);
                // Columns outside the block are untouched.
                assert_eq!(
                    base.0[..c0],
                    c[..c0].iter().map(|x| x.to_bits()).collect::<Vec<_>>()[..]
                );
                for copy in wide_copies() {
                    assert!(run(copy, with_grad, act) == base, "{copy:?} {act:?}");
                }
            }
        }
    }

    /// A transposed `A` (read in place in column tiles where the CPU has AVX-512): the same
    /// bits as the product of its contiguous copy (one `gemm` call per k chunk, `A` packed),
    /// on 1 to 5 threads, with `k` above one pass and tile counts that leave a short last
    /// tile (merged when under 8 columns), in f32 and f64.
    #[test]
    fn transposed_lhs_in_tiles_matches_its_contiguous_copy() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for dtype in [DType::F32, DType::F64] {
            for (m, k, n) in [
                (70, 1100, 300),
                (200, 600, 263),
                (9, 40, 129),
                (130, 513, 64),
            ] {
                let at = Tensor::randn(&[k, m], 0.0, 1.0, dtype, &mut rng);
                let b = Tensor::randn(&[k, n], 0.0, 1.0, dtype, &mut rng);
                let a = at.t().unwrap();
                let dense = a.contiguous().unwrap();
                let reference = on_threads(1, || dense.matmul(&b).unwrap().to_vec_f64().unwrap());
                for threads in [1, 2, 3, 5] {
                    let got = on_threads(threads, || a.matmul(&b).unwrap().to_vec_f64().unwrap());
                    assert!(
                        got == reference,
                        "{dtype:?} {m}x{k}x{n} on {threads} threads"
                    );
                }
            }
        }
    }

    /// Products split into one block per thread, with `k` above one `gemm` pass and blocks
    /// in both of `gemm`'s size classes: bit-identical on 1, 2, 3 and 5 threads (`linear`
    /// too, which adds a bias per block).
    #[test]
    fn products_do_not_depend_on_the_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (m, k, n) in [
            (100, 700, 64),
            (17, 2000, 16),
            (256, 700, 64),
            (65, 3000, 8),
            (9, 1500, 120),
            (1, 1100, 257),
            (257, 1100, 1),
        ] {
            let a = Tensor::randn(&[m, k], 0.0, 1.0, DType::F32, &mut rng);
            let b = Tensor::randn(&[k, n], 0.0, 1.0, DType::F32, &mut rng);
            let bias = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
            let run = || {
                let p = a.matmul(&b).unwrap().to_vec::<f32>().unwrap();
                let wt = b.t().unwrap();
                let l = a.linear(&wt, Some(&bias)).unwrap().to_vec::<f32>().unwrap();
                (p, l)
            };
            let one = on_threads(1, run);
            for threads in [2, 3, 5] {
                assert!(
                    one == on_threads(threads, run),
                    "{m}x{k}x{n} on {threads} threads"
                );
            }
        }
    }
}
