//! Integer indexing along one dimension: `index_select`, `gather` and `embedding`, with
//! PyTorch's semantics. Every backward scatter-ADDS into a zero gradient, so an index that
//! occurs several times receives the sum of its upstream gradients (case BC-10).

use crate::cpu::{dense, fill_rows, zeros};
use crate::dtype::with_dtype;
use crate::layout::{Layout, Shape};
use crate::{Error, Float, Result, Tensor};

/// Error naming the first index that is not below `size`.
fn check_indices(op: &'static str, indices: &[usize], dim: usize, size: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= size) {
        Some(&i) => Err(Error::invalid(
            op,
            format!("index {i} is out of range for dim {dim} of size {size}"),
        )),
        None => Ok(()),
    }
}

/// `out[o, j, :] = x[o, idx[j], :]` for dense `x` viewed as `[outer, size, inner]`.
fn select_forward<T: Float>(
    x: &[T],
    outer: usize,
    size: usize,
    inner: usize,
    idx: &[usize],
) -> Vec<T> {
    let k = idx.len();
    let mut out = zeros(outer * k * inner);
    fill_rows(&mut out, inner, |r, dst| {
        let src = ((r / k) * size + idx[r % k]) * inner;
        dst.copy_from_slice(&x[src..src + inner]);
    });
    out
}

/// `gx[o, s, :] = Σ_{j: idx[j] = s} g[o, j, :]`, the adjoint of [`select_forward`]. The
/// positions `j` are grouped by the row they read (a stable counting sort), so every output
/// row is written by one call that sums in increasing `j`: deterministic and parallel.
fn select_backward<T: Float>(
    g: &[T],
    outer: usize,
    size: usize,
    inner: usize,
    idx: &[usize],
) -> Vec<T> {
    let k = idx.len();
    let mut start = vec![0usize; size + 1];
    for &i in idx {
        start[i + 1] += 1;
    }
    for s in 0..size {
        start[s + 1] += start[s];
    }
    let mut next = start.clone();
    let mut readers = vec![0usize; k];
    for (j, &i) in idx.iter().enumerate() {
        readers[next[i]] = j;
        next[i] += 1;
    }
    let mut gx = zeros(outer * size * inner);
    fill_rows(&mut gx, inner, |r, dst| {
        let (o, s) = (r / size, r % size);
        for &j in &readers[start[s]..start[s + 1]] {
            let src = (o * k + j) * inner;
            for (d, &v) in dst.iter_mut().zip(&g[src..src + inner]) {
                *d += v;
            }
        }
    });
    gx
}

/// `layout` restricted to `shape` (no larger outside `dim`) with stride 0 along `dim`: its
/// offsets are where the gathered element of each position is found when the index is 0.
fn index_base(layout: &Layout, dim: usize, shape: &[usize]) -> Layout {
    let mut strides: Shape = layout.strides().into();
    strides[dim] = 0;
    Layout::new(shape.into(), strides, layout.offset())
}

/// `out[p] = x[base(p) + idx[p]·stride]` for every position `p` of `base`.
fn gather_forward<T: Float>(x: &[T], base: &Layout, stride: usize, idx: &[usize]) -> Vec<T> {
    let mut out = zeros(idx.len());
    let (n, s) = base.inner();
    fill_rows(&mut out, n, |r, dst| {
        let b = base.row_offset(r);
        for (j, d) in dst.iter_mut().enumerate() {
            *d = x[b + j * s + idx[r * n + j] * stride];
        }
    });
    out
}

/// The adjoint of [`gather_forward`] into a dense gradient of `numel` elements (sequential,
/// so duplicates add in a fixed order).
fn gather_backward<T: Float>(
    g: &[T],
    base: &Layout,
    stride: usize,
    idx: &[usize],
    numel: usize,
) -> Vec<T> {
    let mut gx = zeros(numel);
    for ((o, &i), &v) in base.offsets().zip(idx).zip(g) {
        gx[o + i * stride] += v;
    }
    gx
}

impl Tensor {
    /// The entries `indices` of dimension `dim`, in that order (PyTorch `index_select`):
    /// for `self` of shape `[..., n, ...]` (n at `dim`) the result has `indices.len()` there.
    /// Indices may repeat; their gradients add up. Works on strided views.
    ///
    /// Errors with [`Error::DimOutOfRange`] for a bad `dim` and [`Error::InvalidArgument`]
    /// naming the first index `>= n`.
    pub fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Tensor> {
        self.index_select_op("index_select", dim, indices)
    }

    fn index_select_op(&self, op: &'static str, dim: usize, indices: &[usize]) -> Result<Tensor> {
        self.check_dim(op, dim)?;
        let in_shape = self.shape().to_vec();
        let size = in_shape[dim];
        check_indices(op, indices, dim, size)?;
        let outer: usize = in_shape[..dim].iter().product();
        let inner: usize = in_shape[dim + 1..].iter().product();
        let mut out_shape = in_shape.clone();
        out_shape[dim] = indices.len();
        let idx = indices.to_vec();
        let out = with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>(op, |d, l| select_forward(&dense(d, l), outer, size, inner, &idx))?;
            Tensor::from_vec(v, &out_shape)?
        });
        Ok(out.record(&[self], op, move |g| {
            with_dtype!(g.dtype(), T => {
                let v = g.with_cpu::<T, _>(op, |d, l| select_backward(&dense(d, l), outer, size, inner, &idx))?;
                Ok(vec![Some(Tensor::from_vec(v, &in_shape)?)])
            })
        }))
    }

    /// PyTorch `gather`: `out[p] = self[p with p[dim] replaced by index[p]]`, where `index`
    /// holds the row-major entries of a tensor of shape `index_shape`. `index_shape` has the
    /// rank of `self` and no dim larger than `self`'s except at `dim`; the result has shape
    /// `index_shape`. Repeated indices accumulate their gradients.
    ///
    /// Errors with [`Error::DimOutOfRange`] for a bad `dim`, [`Error::ShapeMismatch`] for a
    /// bad `index_shape`, and [`Error::InvalidArgument`] when `index` does not have
    /// `index_shape`'s element count or holds an index `>=` the size of `dim`.
    pub fn gather(&self, dim: usize, index: &[usize], index_shape: &[usize]) -> Result<Tensor> {
        let op = "gather";
        self.check_dim(op, dim)?;
        let in_shape = self.shape().to_vec();
        let fits = index_shape.len() == in_shape.len()
            && (0..in_shape.len()).all(|d| d == dim || index_shape[d] <= in_shape[d]);
        if !fits {
            return Err(Error::ShapeMismatch {
                op,
                lhs: in_shape,
                rhs: index_shape.to_vec(),
            });
        }
        if index.len() != index_shape.iter().product::<usize>() {
            return Err(Error::invalid(
                op,
                format!("{} indices cannot have shape {index_shape:?}", index.len()),
            ));
        }
        check_indices(op, index, dim, in_shape[dim])?;
        let idx = index.to_vec();
        let out = with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>(op, |d, l| {
                gather_forward(d, &index_base(l, dim, index_shape), l.strides()[dim], &idx)
            })?;
            Tensor::from_vec(v, index_shape)?
        });
        Ok(out.record(&[self], op, move |g| {
            let dense_in = Layout::contiguous(&in_shape);
            let base = index_base(&dense_in, dim, g.shape());
            let stride = dense_in.strides()[dim];
            with_dtype!(g.dtype(), T => {
                let v = g.with_cpu::<T, _>(op, |d, l| {
                    gather_backward(&dense(d, l), &base, stride, &idx, dense_in.numel())
                })?;
                Ok(vec![Some(Tensor::from_vec(v, &in_shape)?)])
            })
        }))
    }

    /// Embedding lookup (PyTorch `nn.functional.embedding`): `self` is the weight table
    /// `[V, D]`, `ids` the row-major entries of a tensor of shape `ids_shape`; the result has
    /// shape `[..ids_shape, D]` and holds row `ids[i]` of the table at position `i`. The
    /// backward scatter-adds into the table, so repeated ids accumulate (BC-10).
    ///
    /// Errors with [`Error::InvalidArgument`] when `self` is not 2-D, `ids` does not have
    /// `ids_shape`'s element count, or an id is `>= V` (the message names the id and `V`).
    pub fn embedding(&self, ids: &[usize], ids_shape: &[usize]) -> Result<Tensor> {
        let op = "embedding";
        if self.rank() != 2 {
            return Err(Error::invalid(
                op,
                format!("weight must be [V, D], shape is {:?}", self.shape()),
            ));
        }
        if ids.len() != ids_shape.iter().product::<usize>() {
            return Err(Error::invalid(
                op,
                format!("{} ids cannot have shape {ids_shape:?}", ids.len()),
            ));
        }
        let mut shape = ids_shape.to_vec();
        shape.push(self.shape()[1]);
        self.index_select_op(op, 0, ids)?.reshape(&shape)
    }
}

#[cfg(test)]
mod tests {
    use crate::cpu::on_threads;
    use crate::{DType, Tensor};
    use rand::{Rng, SeedableRng};

    /// A table gradient large enough for the parallel path: bit-identical on 1 and 4
    /// threads, and equal to a sequential scatter-add over many duplicate ids.
    #[test]
    fn embedding_scatter_add_is_exact_and_thread_independent() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (v, d) = (5000, 8);
        let ids: Vec<usize> = (0..20_000).map(|_| rng.gen_range(0..v)).collect();
        let g = Tensor::randn(&[ids.len(), d], 0.0, 1.0, DType::F32, &mut rng);
        let run = || {
            let w = Tensor::zeros(&[v, d], DType::F32)
                .requires_grad_(true)
                .unwrap();
            let y = w.embedding(&ids, &[ids.len()]).unwrap();
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            w.grad().unwrap().to_vec::<f32>().unwrap()
        };
        let one = on_threads(1, run);
        assert_eq!(one, on_threads(4, run));
        let gv = g.to_vec::<f32>().unwrap();
        let mut want = vec![0f32; v * d];
        for (j, &i) in ids.iter().enumerate() {
            for k in 0..d {
                want[i * d + k] += gv[j * d + k];
            }
        }
        assert_eq!(one, want);
    }
}
