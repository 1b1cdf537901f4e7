//! Shared machinery of the CPU kernels: parallel grain, strided element access.

use crate::layout::Layout;
use crate::Float;
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

/// Elementwise work below this many elements runs on the calling thread: rayon's fork/join
/// costs a few microseconds, which only pays off on large tensors.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// The elements of `layout` over `data`, in row-major order (a copy only when strided).
pub(crate) fn gather<T: Float>(data: &[T], layout: &Layout) -> Vec<T> {
    match layout.contiguous_range() {
        Some(r) => data[r].to_vec(),
        None => {
            let mut out = zeros(layout.numel());
            let (n, s) = layout.inner();
            fill_rows(&mut out, n, |row, dst| {
                let base = layout.row_offset(row);
                if s == 1 {
                    dst.copy_from_slice(&data[base..base + n]);
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = data[base + j * s];
                    }
                }
            });
            out
        }
    }
}

/// The elements of `layout` over `data` as a dense row-major slice: borrowed when the
/// layout is contiguous, gathered into a copy otherwise.
pub(crate) fn dense<'a, T: Float>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    match layout.contiguous_range() {
        Some(r) => Cow::Borrowed(&data[r]),
        None => Cow::Owned(gather(data, layout)),
    }
}

/// Splits `out` into rows of `row_len` and calls `f(row_index, row)` on each, in parallel
/// when the total is large. Each row is written by exactly one call, so results do not
/// depend on scheduling.
pub(crate) fn fill_rows<T: Float>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if out.is_empty() || row_len == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS || rayon::current_num_threads() == 1 {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        let rows_per_task = (PAR_MIN_ELEMS / 4 / row_len).max(1);
        out.par_chunks_mut(rows_per_task * row_len)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (i, r) in chunk.chunks_mut(row_len).enumerate() {
                    f(c * rows_per_task + i, r)
                }
            });
    }
}

/// Whether elementwise work of `n` elements runs on the calling thread.
pub(crate) fn sequential(n: usize) -> bool {
    n < PAR_MIN_ELEMS || rayon::current_num_threads() == 1
}

/// Elements per rayon task of the dense elementwise kernels.
const DENSE_GRAIN: usize = 4096;

/// `f(i)` for every row `i < n_rows` of a matrix with rows of `row_len` elements, in
/// parallel when the matrix is large. The result is in row order and each entry is computed
/// by one call, so it does not depend on the thread count.
pub(crate) fn map_rows<R: Send>(
    n_rows: usize,
    row_len: usize,
    f: impl Fn(usize) -> R + Sync + Send,
) -> Vec<R> {
    if n_rows.saturating_mul(row_len) < PAR_MIN_ELEMS || rayon::current_num_threads() == 1 {
        (0..n_rows).map(f).collect()
    } else {
        (0..n_rows).into_par_iter().map(f).collect()
    }
}

/// `out[i] = f(a[i], b[i])` over two layouts already broadcast to the output shape.
pub(crate) fn zip_map<T: Float>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let n = la.numel();
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (a, b) = (&a[ra], &b[rb]);
        // SAFETY: `a` and `b` have `n` elements, so the loop writes all of every chunk.
        return unsafe {
            fill_dense(n, |s, o| {
                let r = s..s + o.len();
                for ((o, &x), &y) in o.iter_mut().zip(&a[r.clone()]).zip(&b[r]) {
                    o.write(f(x, y));
                }
            })
        };
    }
    let mut out = zeros(n);
    let (len, sa) = la.inner();
    let (_, sb) = lb.inner();
    fill_rows(&mut out, len, |row, dst| {
        let (oa, ob) = (la.row_offset(row), lb.row_offset(row));
        // Rows of unit or zero stride (a broadcast bias or mask) get slice loops, which
        // vectorize; other strides index element by element.
        match (sa, sb) {
            (1, 1) => {
                for ((d, &x), &y) in dst.iter_mut().zip(&a[oa..oa + len]).zip(&b[ob..ob + len]) {
                    *d = f(x, y);
                }
            }
            (1, 0) => {
                let y = b[ob];
                for (d, &x) in dst.iter_mut().zip(&a[oa..oa + len]) {
                    *d = f(x, y);
                }
            }
            (0, 1) => {
                let x = a[oa];
                for (d, &y) in dst.iter_mut().zip(&b[ob..ob + len]) {
                    *d = f(x, y);
                }
            }
            _ => {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = f(a[oa + j * sa], b[ob + j * sb]);
                }
            }
        }
    });
    out
}

/// A new dense vector of `n` elements, each written once by `f(start, chunk)` (the output
/// elements `start..start + chunk.len()`). Chunks run in parallel when `n` is large. No
/// zero fill precedes the writes, and the per-chunk loops are plain slice loops that the
/// compiler vectorizes.
///
/// # Safety
/// `f` must initialize every element of every `chunk` it is given.
pub(crate) unsafe fn fill_dense<T: Float>(
    n: usize,
    f: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if sequential(n) {
        f(0, spare);
    } else {
        spare
            .par_chunks_mut(DENSE_GRAIN)
            .enumerate()
            .for_each(|(c, chunk)| f(c * DENSE_GRAIN, chunk));
    }
    // SAFETY: `f` initialized all `n` elements (the caller's contract), and `n <= capacity`.
    unsafe { out.set_len(n) };
    out
}

/// `n` zeros, written in parallel chunks when `n` is large: a zeroed allocation that reuses
/// freed memory is otherwise one `memset` on the calling thread while the others wait.
pub(crate) fn zeros<T: Float>(n: usize) -> Vec<T> {
    // SAFETY: the loop writes every element of every chunk.
    unsafe {
        fill_dense(n, |_, o| {
            for v in o {
                v.write(T::zero());
            }
        })
    }
}

/// `out[i] = f(x[i])` over a contiguous slice.
pub(crate) fn map<T: Float>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    // SAFETY: `x` has as many elements as the output, so the loop writes all of a chunk.
    unsafe {
        fill_dense(x.len(), |s, o| {
            let x = &x[s..s + o.len()];
            for (o, &v) in o.iter_mut().zip(x) {
                o.write(f(v));
            }
        })
    }
}

/// `(p[i], q[i]) = f(x[i])` over a contiguous slice: two outputs from one pass.
///
/// A hot elementwise loop of training (a unary op's value and derivative), so each chunk
/// runs through [`widest`].
pub(crate) fn map_pair<T: Float>(x: &[T], f: impl Fn(T) -> (T, T) + Sync) -> (Vec<T>, Vec<T>) {
    let n = x.len();
    let (mut p, mut q) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (sp, sq) = (
        &mut p.spare_capacity_mut()[..n],
        &mut q.spare_capacity_mut()[..n],
    );
    let run = |x, p, q| widest(PairChunk { x, p, q, f: &f });
    if sequential(n) {
        run(x, sp, sq);
    } else {
        x.par_chunks(DENSE_GRAIN)
            .zip(sp.par_chunks_mut(DENSE_GRAIN))
            .zip(sq.par_chunks_mut(DENSE_GRAIN))
            .for_each(|((x, sp), sq)| run(x, sp, sq));
    }
    // SAFETY: the loops above wrote all `n` elements of both, and `n <= capacity`.
    unsafe {
        p.set_len(n);
        q.set_len(n);
    }
    (p, q)
}

/// One chunk of [`map_pair`]: `(p[i], q[i]) = f(x[i])`, written for the compiler to
/// vectorize (`f`, a small closure, is inlined into each copy).
struct PairChunk<'a, T, F> {
    x: &'a [T],
    p: &'a mut [MaybeUninit<T>],
    q: &'a mut [MaybeUninit<T>],
    f: &'a F,
}

impl<T: Float, F: Fn(T) -> (T, T)> Widen for PairChunk<'_, T, F> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((&v, op), oq) in self.x.iter().zip(self.p).zip(self.q) {
            let (a, b) = (self.f)(v);
            op.write(a);
            oq.write(b);
        }
    }
}

/// A loop to run at the CPU's full vector width through [`widest`]. Its `run` must be
/// `#[inline(always)]`, and so must what it calls: only code inlined into each copy is
/// compiled for that copy's width, and the compiler may leave a closure or a function out
/// of line (it did, for a softmax row loop passed as a closure).
pub(crate) trait Widen {
    type Output;
    fn run(self) -> Self::Output;
}

/// `k.run()` compiled for the widest vector extension this CPU has (AVX-512F, else AVX2,
/// else the baseline target), chosen at run time, so the binary still targets baseline
/// x86-64. The results are bit-identical to the baseline's: only the vector width changes
/// (Rust never contracts `a·b + c` into a fused multiply-add, nor reassociates
/// floating-point operations). Used per chunk or row of the hot loops: [`map_pair`], the
/// product epilogue, the attention's softmax rows, layer_norm's backward rows.
#[inline(always)]
pub(crate) fn widest<K: Widen>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { run_avx512(k) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { run_avx2(k) };
        }
    }
    k.run()
}

/// `k.run()` compiled for AVX2 (see [`widest`]).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn run_avx2<K: Widen>(k: K) -> K::Output {
    k.run()
}

/// `k.run()` compiled for AVX-512F (see [`widest`]).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn run_avx512<K: Widen>(k: K) -> K::Output {
    k.run()
}

/// The copies of a [`Widen`] kernel, for tests that compare them.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum WideCopy {
    Baseline,
    Avx2,
    Avx512,
}

/// The wide copies this CPU can run (AVX2, AVX-512F), to compare against the baseline.
#[cfg(test)]
pub(crate) fn wide_copies() -> Vec<WideCopy> {
    let mut copies = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            copies.push(WideCopy::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            copies.push(WideCopy::Avx512);
        }
    }
    copies
}

/// `k.run()` through one chosen copy (one that [`wide_copies`] lists, or the baseline).
#[cfg(test)]
pub(crate) fn run_as<K: Widen>(copy: WideCopy, k: K) -> K::Output {
    match copy {
        WideCopy::Baseline => k.run(),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `wide_copies` lists AVX2 only when the CPU has it.
        WideCopy::Avx2 => unsafe { run_avx2(k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `wide_copies` lists AVX-512F only when the CPU has it.
        WideCopy::Avx512 => unsafe { run_avx512(k) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("wide copies exist on x86-64 only"),
    }
}

/// Lanes of the partial sums of [`lane_sum`] and [`lane_dot`] (and of softmax's row maxima
/// and the `sum`/`max` reductions): independent accumulators let the loops vectorize, and the fixed count keeps
/// results independent of the machine.
pub(crate) const LANES: usize = 8;

/// `Σ f(x[i])` in [`LANES`] interleaved partial sums (lane `l` takes elements `l`,
/// `l + LANES`, …) added in lane order, then the tail. A plain running sum is one long
/// dependency chain that the compiler may not reorder, so it runs at one add per
/// floating-point latency; this loop vectorizes, and its order is fixed by the length alone.
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(x: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let t = tail.iter().fold(T::zero(), |a, &v| a + f(v));
    acc.iter().fold(T::zero(), |a, &b| a + b) + t
}

/// `Σ a[i]·b[i]` over the common length of two slices, in the order of [`lane_sum`].
#[inline(always)]
pub(crate) fn lane_dot<T: Float>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let t = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (p, q) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(p).zip(q) {
            *s += x * y;
        }
    }
    acc.iter().fold(T::zero(), |s, &v| s + v) + t
}

/// `Σ a[i]·b[i]` over the common length of two slices (a longer slice's extra elements are
/// ignored), accumulated in `f64` whatever their element types, in 8 lanes seeded with the
/// tail (vectorizable; the order depends only on the length, so the result is the same on
/// every thread count and machine). Used for norms of gradients and the σReparam power
/// iteration; `dot_f64(x, x)` is `‖x‖²`.
pub fn dot_f64<A: Float, B: Float>(a: &[A], b: &[B]) -> f64 {
    let n = a.len().min(b.len());
    let (ca, cb) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let mut acc = [0.0f64; LANES];
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] = x.to_f64_lossless() * y.to_f64_lossless();
    }
    for (p, q) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += p[l].to_f64_lossless() * q[l].to_f64_lossless();
        }
    }
    acc.iter().sum()
}

/// Raw pointer that may cross threads; the caller guarantees disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Runs `f` in a rayon pool of `threads` threads, to test that results do not depend on
/// the thread count.
#[cfg(test)]
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane order is observable in f32: with 2²⁴ in lane 0, a running sum loses every
    /// 1 added before the −2²⁴ (7 in all); the lanes keep them apart and lose none.
    #[test]
    fn lane_sums_keep_their_fixed_order() {
        let big = 16_777_216.0f32;
        let mut x = vec![big, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        x.extend([-big, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(x.iter().sum::<f32>(), 9.0);
        assert_eq!(lane_sum(&x, |v| v), 16.0);
        let ones = vec![1.0f32; x.len()];
        assert_eq!(lane_dot(&x, &ones), 16.0);
        let y: Vec<f64> = (1..=19).map(f64::from).collect();
        assert_eq!(lane_sum(&y, |v| v * v), 2470.0);
        assert_eq!(lane_dot(&y, &y), 2470.0);
        assert_eq!(dot_f64(&x, &ones), 16.0);
        // Slices of different lengths: the common prefix only, element by element.
        assert_eq!(dot_f64(&y[..10], &y), 385.0);
        assert_eq!(dot_f64(&y, &y[..10]), 385.0);
    }

    /// Every copy of the `map_pair` loop this CPU can run (baseline, AVX2, AVX-512F), and
    /// `map_pair` itself, must give the plain scalar loop's results bit for bit, at every
    /// length (tails included).
    #[test]
    fn map_pair_copies_match_the_scalar_loop_bit_for_bit() {
        let f = |v: f32| ((v * 0.5).fast_exp(), 1.0 / (1.0 + v * v) - v / 3.0);
        let mut copies = vec![WideCopy::Baseline];
        copies.extend(wide_copies());
        for n in [0, 1, 7, 17, 4096, 100_003] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 1e-3).collect();
            let want: (Vec<f32>, Vec<f32>) = x.iter().map(|&v| f(v)).unzip();
            assert_eq!(map_pair(&x, f), want, "map_pair, n = {n}");
            for &copy in &copies {
                let (mut p, mut q) = (
                    vec![MaybeUninit::uninit(); n],
                    vec![MaybeUninit::uninit(); n],
                );
                let k = PairChunk {
                    x: &x,
                    p: &mut p,
                    q: &mut q,
                    f: &f,
                };
                run_as(copy, k);
                // SAFETY: the copy wrote all `n` elements of both.
                let got: (Vec<f32>, Vec<f32>) = unsafe {
                    (
                        p.iter().map(|v| v.assume_init()).collect(),
                        q.iter().map(|v| v.assume_init()).collect(),
                    )
                };
                assert_eq!(got, want, "{copy:?}, n = {n}");
            }
        }
    }
}
