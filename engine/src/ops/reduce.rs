//! Reductions over dimensions: sum, mean, max, argmax.
//!
//! Results never depend on the thread count: each output is reduced by one thread, and a
//! long reduction is cut into fixed-size chunks whose partial results combine in order.

use crate::cpu::{lane_sum, map_rows, LANES};
use crate::dtype::with_dtype;
use crate::layout::Layout;
use crate::{Error, Float, Result, Tensor};
use rayon::prelude::*;

/// Chunk length of long reductions (fixed, so sums are reproducible across thread counts).
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy)]
enum Reduce {
    Sum,
    Max,
}

impl Reduce {
    fn init<T: Float>(self) -> T {
        match self {
            Reduce::Sum => T::zero(),
            Reduce::Max => T::neg_infinity(),
        }
    }

    fn combine<T: Float>(self, a: T, b: T) -> T {
        match self {
            Reduce::Sum => a + b,
            // NaN propagates, as in PyTorch.
            Reduce::Max => {
                if b > a || b.is_nan() {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// Reduction of a run: in order when short (lanes cost more there than they save), in
    /// [`LANES`] interleaved partial results (so the loop vectorizes) combined in order at
    /// the end up to [`CHUNK`], and in chunks beyond.
    #[inline(always)]
    fn slice<T: Float>(self, x: &[T]) -> T {
        if x.len() < 4 * LANES {
            x.iter().fold(self.init(), |a, &b| self.combine(a, b))
        } else if x.len() <= CHUNK {
            self.lanes(x)
        } else {
            self.chunks(x)
        }
    }

    /// A run of `4·LANES` to [`CHUNK`] elements, in [`LANES`] interleaved partial results
    /// (out of line, so that the short path of [`Reduce::slice`] stays small).
    #[inline(never)]
    fn lanes<T: Float>(self, x: &[T]) -> T {
        match self {
            Reduce::Sum => lane_sum(x, |v| v),
            Reduce::Max => lane_max(x),
        }
    }

    /// A run longer than [`CHUNK`]: chunks reduced in parallel, combined in order.
    #[inline(never)]
    fn chunks<T: Float>(self, x: &[T]) -> T {
        let parts: Vec<T> = x.par_chunks(CHUNK).map(|c| self.slice(c)).collect();
        parts
            .into_iter()
            .fold(self.init(), |a, b| self.combine(a, b))
    }
}

/// The maximum of `x` in [`LANES`] interleaved partial maxima, combined in order; a NaN
/// anywhere gives NaN (as [`Reduce::Max`], unlike softmax's row maximum, which skips NaN).
#[inline(always)]
fn lane_max<T: Float>(x: &[T]) -> T {
    let max = Reduce::Max;
    let mut acc = [max.init(); LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = max.combine(*a, v);
        }
    }
    acc.into_iter()
        .chain(tail.iter().copied())
        .fold(max.init(), |a, b| max.combine(a, b))
}

impl Tensor {
    /// Sorted, de-duplicated reduction dims, checked against the rank.
    fn reduce_dims(&self, op: &'static str, dims: &[usize]) -> Result<Vec<usize>> {
        let mut d = dims.to_vec();
        for &x in &d {
            self.check_dim(op, x)?;
        }
        d.sort_unstable();
        d.dedup();
        Ok(d)
    }

    /// Shape of a reduction over `dims` with the reduced dims kept as size 1.
    fn keep_shape(&self, dims: &[usize]) -> Vec<usize> {
        let shape = self.shape();
        (0..self.rank())
            .map(|d| if dims.contains(&d) { 1 } else { shape[d] })
            .collect()
    }

    /// Forward of a reduction, shaped as the result (reduced dims dropped unless
    /// `keepdim`; dropping size-1 dims does not move data, so one kernel serves both).
    fn reduce_forward(
        &self,
        op: &'static str,
        dims: &[usize],
        keepdim: bool,
        kind: Reduce,
    ) -> Result<Tensor> {
        let shape: Vec<usize> = if keepdim {
            self.keep_shape(dims)
        } else {
            (0..self.rank())
                .filter(|d| !dims.contains(d))
                .map(|d| self.shape()[d])
                .collect()
        };
        with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>(op, |data, l| reduce_kernel(data, l, dims, kind))?;
            Tensor::from_vec(v, &shape)
        })
    }

    /// Sum over `dims` (all given dims; empty `dims` sums nothing). With `keepdim` the
    /// reduced dims stay as size 1. A sum over zero elements is 0.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = self.reduce_dims("sum", dims)?;
        let out = self.reduce_forward("sum", &dims, keepdim, Reduce::Sum)?;
        let in_shape = self.shape().to_vec();
        let keep_shape = self.keep_shape(&dims);
        Ok(out.record(&[self], "sum", move |g| {
            Ok(vec![Some(g.reshape(&keep_shape)?.broadcast_as(&in_shape)?)])
        }))
    }

    /// Sum of all elements, a 0-dimensional tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.sum(&dims, false)
    }

    /// Mean over `dims`. The mean over zero elements is NaN (0/0, as PyTorch).
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = self.reduce_dims("mean", dims)?;
        let count: usize = dims.iter().map(|&d| self.shape()[d]).product();
        self.sum(&dims, keepdim)?.mul_scalar(1.0 / count as f64)
    }

    /// Mean of all elements, a 0-dimensional tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = (0..self.rank()).collect();
        self.mean(&dims, false)
    }

    /// Maximum over `dims`. The gradient is split evenly among tied maxima (PyTorch
    /// `amax`), so it always sums to the upstream gradient. Errors on an empty reduction.
    pub fn max(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let dims = self.reduce_dims("max", dims)?;
        if dims.iter().any(|&d| self.shape()[d] == 0) {
            return Err(Error::invalid(
                "max",
                format!("reduction over an empty dim of shape {:?}", self.shape()),
            ));
        }
        let out = self.reduce_forward("max", &dims, keepdim, Reduce::Max)?;
        let keep_shape = self.keep_shape(&dims);
        let (x, y) = (self.detach(), out.detach().reshape(&keep_shape)?);
        Ok(out.record(&[self], "max", move |g| {
            let mask = x.eq(&y)?;
            let count = mask.sum(&dims, true)?;
            Ok(vec![Some(g.reshape(&keep_shape)?.mul(&mask)?.div(&count)?)])
        }))
    }

    /// The index of the maximum along `dim` (PyTorch `argmax(dim)`), one per position of the
    /// other dims, in row-major order of those dims (the elements of
    /// `max(&[dim], false)`). Ties give the first index. NaN counts as larger than every
    /// number, as in PyTorch: a run holding NaN gives the index of its first NaN. Not
    /// differentiable.
    ///
    /// Errors with [`Error::DimOutOfRange`] when `dim` is not below the rank, and with
    /// [`Error::InvalidArgument`] naming the shape when dim `dim` is empty.
    pub fn argmax(&self, dim: usize) -> Result<Vec<usize>> {
        self.check_dim("argmax", dim)?;
        let n = self.shape()[dim];
        if n == 0 {
            return Err(Error::invalid(
                "argmax",
                format!("dim {dim} of shape {:?} is empty", self.shape()),
            ));
        }
        // `dim` moved last, so each run of `n` is one output, in the order of the other dims.
        let mut perm: Vec<usize> = (0..self.rank()).filter(|&d| d != dim).collect();
        perm.push(dim);
        let x = crate::no_grad(|| self.permute(&perm)?.contiguous())?;
        with_dtype!(self.dtype(), T => x.with_data(|v: &[T]| {
            map_rows(v.len() / n, n, |r| first_max(&v[r * n..(r + 1) * n]))
        }))
    }
}

/// The index of the first maximum of a non-empty `x`, NaN above every number (so the first
/// NaN, if any).
fn first_max<T: Float>(x: &[T]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate().skip(1) {
        if x[best].is_nan() {
            break;
        }
        if v > x[best] || v.is_nan() {
            best = i;
        }
    }
    best
}

/// A non-contiguous `l` that is a permutation of dense data (heads split by `permute`, a
/// transpose) as that dense layout, with `dims` renumbered, when the kept dims (of size > 1)
/// keep their order, so the output order is unchanged and the contiguous paths of
/// [`reduce_kernel`] apply: such views are then reduced in memory order, as PyTorch's
/// reductions do, not offset by offset.
fn memory_order(l: &Layout, dims: &[usize]) -> Option<(Layout, Vec<usize>)> {
    if l.is_contiguous() {
        return None;
    }
    let mut perm: Vec<usize> = (0..l.rank()).collect();
    perm.sort_by_key(|&d| std::cmp::Reverse(l.strides()[d]));
    let pl = l.permute(&perm);
    let kept: Vec<usize> = perm
        .iter()
        .copied()
        .filter(|d| !dims.contains(d) && l.shape()[*d] > 1)
        .collect();
    if !pl.is_contiguous() || !kept.is_sorted() {
        return None;
    }
    let pdims = (0..perm.len())
        .filter(|&i| dims.contains(&perm[i]))
        .collect();
    Some((pl, pdims))
}

/// Reduce `data` seen through `l` over the sorted `dims`; output in row-major order of the
/// kept dims.
fn reduce_kernel<T: Float>(data: &[T], l: &Layout, dims: &[usize], kind: Reduce) -> Vec<T> {
    let rank = l.rank();
    let (shape, strides) = (l.shape(), l.strides());
    let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    let n_out: usize = kept.iter().map(|&d| shape[d]).product();
    let n_red: usize = dims.iter().map(|&d| shape[d]).product();
    if n_out == 0 {
        return Vec::new();
    }
    if n_red == 0 {
        return vec![kind.init(); n_out];
    }
    if let Some((pl, pdims)) = memory_order(l, dims) {
        return reduce_kernel(data, &pl, &pdims, kind);
    }
    if let Some(r) = l.contiguous_range() {
        let x = &data[r];
        let k = dims.len();
        // Trailing dims reduced: each output is a contiguous run.
        if dims.iter().enumerate().all(|(i, &d)| d == rank - k + i) {
            return if n_out >= rayon::current_num_threads() * 2
                && x.len() >= crate::cpu::PAR_MIN_ELEMS
            {
                x.par_chunks(n_red).map(|c| kind.slice(c)).collect()
            } else {
                x.chunks(n_red).map(|c| kind.slice(c)).collect()
            };
        }
        // Leading dims reduced: accumulate whole rows (each output in row order), with the
        // columns split into one wide block per thread, so each row is read in long runs.
        if dims.iter().enumerate().all(|(i, &d)| d == i) {
            let mut out = vec![kind.init(); n_out];
            let cols = if crate::cpu::sequential(x.len()) {
                n_out
            } else {
                n_out
                    .div_ceil(rayon::current_num_threads())
                    .next_multiple_of(16)
            };
            // One loop per kind (the match outside), so the row accumulation vectorizes.
            fn accumulate<T: Float>(
                x: &[T],
                n_out: usize,
                c0: usize,
                o: &mut [T],
                f: impl Fn(T, T) -> T,
            ) {
                let len = o.len();
                for row in x.chunks(n_out) {
                    for (a, &b) in o.iter_mut().zip(&row[c0..c0 + len]) {
                        *a = f(*a, b);
                    }
                }
            }
            let body = |(ci, o): (usize, &mut [T])| match kind {
                Reduce::Sum => accumulate(x, n_out, ci * cols, o, |a, b| a + b),
                Reduce::Max => accumulate(x, n_out, ci * cols, o, |a, b| Reduce::Max.combine(a, b)),
            };
            out.par_chunks_mut(cols).enumerate().for_each(body);
            return out;
        }
    }
    // General strided case: one output at a time.
    let kept_l = Layout::new(
        kept.iter().map(|&d| shape[d]).collect(),
        kept.iter().map(|&d| strides[d]).collect(),
        l.offset(),
    );
    let red_l = Layout::new(
        dims.iter().map(|&d| shape[d]).collect(),
        dims.iter().map(|&d| strides[d]).collect(),
        0,
    );
    let red_offsets: Vec<usize> = red_l.offsets().collect();
    let bases: Vec<usize> = kept_l.offsets().collect();
    let one = |&base: &usize| {
        red_offsets
            .iter()
            .fold(kind.init(), |a, &o| kind.combine(a, data[base + o]))
    };
    if n_out * n_red >= crate::cpu::PAR_MIN_ELEMS {
        bases.par_iter().map(one).collect()
    } else {
        bases.iter().map(one).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    /// Sums and maxima of permuted views, over every subset of dims, equal those of their
    /// contiguous copies (integer values, so every summation order is exact), whether or not
    /// the view can be reduced in memory order.
    #[test]
    fn permuted_views_reduce_like_their_copies() {
        let shape = [3, 4, 5, 2];
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i * 37) % 23) as f64 - 11.0).collect();
        let x = Tensor::from_f64s(&v, &shape, DType::F64).unwrap();
        for perm in [[0, 2, 1, 3], [3, 2, 1, 0], [1, 0, 3, 2], [0, 1, 3, 2]] {
            let view = x.permute(&perm).unwrap();
            let copy = view.contiguous().unwrap();
            assert!(!view.layout().is_contiguous());
            for mask in 1..16usize {
                let dims: Vec<usize> = (0..4).filter(|d| mask >> d & 1 == 1).collect();
                for keepdim in [false, true] {
                    let (a, b) = (
                        view.sum(&dims, keepdim).unwrap(),
                        copy.sum(&dims, keepdim).unwrap(),
                    );
                    assert_eq!(a.shape(), b.shape(), "{perm:?} {dims:?}");
                    assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
                    let (a, b) = (
                        view.max(&dims, keepdim).unwrap(),
                        copy.max(&dims, keepdim).unwrap(),
                    );
                    assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
                }
            }
        }
        // A full reduction of a permuted view runs over the dense data in memory order.
        let view = x.permute(&[3, 1, 0, 2]).unwrap();
        let (pl, pdims) = memory_order(view.layout(), &[0, 1, 2, 3]).unwrap();
        assert!(pl.is_contiguous());
        assert_eq!(pdims, [0, 1, 2, 3]);
        assert_eq!(
            view.sum_all().unwrap().to_vec_f64().unwrap(),
            [v.iter().sum::<f64>()]
        );
        // Kept dims out of memory order: no reordering (the output order would change).
        assert!(memory_order(x.t().unwrap().layout(), &[]).is_none());
    }

    /// Indices in row-major order of the other dims, the first of tied maxima, the first
    /// NaN of a run holding NaN (as PyTorch), on a permuted view too; errors on a bad or
    /// empty dim.
    #[test]
    fn argmax_values_ties_nan_and_errors() {
        let nan = f64::NAN;
        // [2, 3, 2]: element (i, j, k) at 6i + 2j + k.
        let v = [
            1.0, 5.0, 7.0, 5.0, 7.0, -1.0, //
            2.0, nan, 2.0, 0.0, -3.0, nan,
        ];
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::from_f64s(&v, &[2, 3, 2], dtype).unwrap();
            // Over dim 1, outputs (i, k): 1,7,7 → 1; 5,5,−1 → 0; 2,2,−3 → 0; NaN,0,NaN → 0.
            assert_eq!(x.argmax(1).unwrap(), [1, 0, 0, 0]);
            assert_eq!(x.argmax(2).unwrap(), [1, 0, 0, 1, 0, 1]);
            assert_eq!(x.argmax(0).unwrap(), [1, 1, 0, 0, 0, 1]);
            let p = x.permute(&[2, 0, 1]).unwrap();
            assert_eq!(p.argmax(2).unwrap(), [1, 0, 0, 0]);
            assert_eq!(p.argmax(1).unwrap(), [1, 0, 0, 1, 0, 1]);
        }
        let x = Tensor::from_f64s(&[1.0, 9.0, nan, 10.0, nan], &[5], DType::F64).unwrap();
        assert_eq!(x.argmax(0).unwrap(), [2]);
        let x = Tensor::from_f64s(&[3.0, 3.0, 3.0], &[3], DType::F64).unwrap();
        assert_eq!(x.argmax(0).unwrap(), [0]);
        assert!(matches!(x.argmax(1), Err(Error::DimOutOfRange { .. })));
        let e = Tensor::zeros(&[2, 0], DType::F64);
        let err = e.argmax(1).unwrap_err().to_string();
        assert!(err.contains("dim 1 of shape [2, 0] is empty"), "{err}");
        assert!(e.argmax(0).unwrap().is_empty());
    }

    /// Runs long enough for the interleaved lanes (and one past `CHUNK`) give the exact sum
    /// and maximum, and a NaN anywhere in a run gives NaN.
    #[test]
    fn long_runs_reduce_exactly_and_propagate_nan() {
        for len in [31, 32, 33, 63, 64, 65, 100, 1000, CHUNK + 17] {
            let v: Vec<f64> = (0..2 * len)
                .map(|i| ((i * 13) % 29) as f64 - 14.0)
                .collect();
            let x = Tensor::from_f64s(&v, &[2, len], DType::F64).unwrap();
            let sums: Vec<f64> = v.chunks(len).map(|r| r.iter().sum()).collect();
            assert_eq!(x.sum(&[1], false).unwrap().to_vec_f64().unwrap(), sums);
            let maxes: Vec<f64> = v
                .chunks(len)
                .map(|r| r.iter().copied().fold(f64::MIN, f64::max))
                .collect();
            assert_eq!(x.max(&[1], false).unwrap().to_vec_f64().unwrap(), maxes);
            let mut w = v.clone();
            w[len + len / 2 + 1] = f64::NAN;
            let y = Tensor::from_f64s(&w, &[2, len], DType::F64).unwrap();
            let m = y.max(&[1], false).unwrap().to_vec_f64().unwrap();
            assert!(m[0] == maxes[0] && m[1].is_nan(), "{len}: {m:?}");
        }
    }
}
