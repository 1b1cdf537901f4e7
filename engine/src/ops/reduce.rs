//! Reductions over dimensions: sum, mean, max.
//!
//! Results never depend on the thread count: each output is reduced by one thread, and a
//! long reduction is cut into fixed-size chunks whose partial results combine in order.

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

    fn slice<T: Float>(self, x: &[T]) -> T {
        if x.len() <= CHUNK {
            return x.iter().fold(self.init(), |a, &b| self.combine(a, b));
        }
        let parts: Vec<T> = x.par_chunks(CHUNK).map(|c| self.slice(c)).collect();
        parts
            .into_iter()
            .fold(self.init(), |a, b| self.combine(a, b))
    }
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
