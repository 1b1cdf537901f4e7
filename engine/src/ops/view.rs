//! Shape ops. Transpose, permute, narrow and broadcast are views (no copy); reshape is a
//! view of contiguous data and a copy otherwise.

use crate::cpu::gather;
use crate::dtype::with_dtype;
use crate::layout::contiguous_strides;
use crate::{Error, Layout, Result, Tensor};

impl Tensor {
    /// A dense row-major copy of the data (always copies; differentiable).
    pub fn copy(&self) -> Result<Tensor> {
        let out = with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>("copy", gather)?;
            Tensor::from_vec(v, self.shape())?
        });
        Ok(out.record(&[self], "copy", |g| Ok(vec![Some(g.clone())])))
    }

    /// A dense row-major copy as a fresh untracked leaf (no graph node is recorded).
    pub(crate) fn dense_copy(&self) -> Result<Tensor> {
        Ok(with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>("copy", gather)?;
            Tensor::from_vec(v, self.shape())?
        }))
    }

    /// `self` when already dense row-major, else a dense copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            Ok(self.clone())
        } else {
            self.copy()
        }
    }

    /// The same elements with another shape of equal element count (PyTorch `reshape`):
    /// a view of contiguous data, a copy otherwise.
    ///
    /// Errors with [`Error::ShapeMismatch`] when the element counts differ.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if crate::layout::checked_numel(shape) != Some(self.numel()) {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                lhs: self.shape().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let layout = Layout::new(
            shape.into(),
            contiguous_strides(shape),
            src.layout().offset(),
        );
        let in_shape: Vec<usize> = self.shape().to_vec();
        Ok(src.view_with(layout, "reshape", move |g| {
            Ok(vec![Some(g.reshape(&in_shape)?)])
        }))
    }

    /// Flatten to one dimension.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// Swap dimensions `d0` and `d1` (a view).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        self.check_dim("transpose", d0)?;
        self.check_dim("transpose", d1)?;
        if d0 == d1 {
            return Ok(self.clone());
        }
        let layout = self.layout().transpose(d0, d1);
        Ok(self.view_with(layout, "transpose", move |g| {
            Ok(vec![Some(g.transpose(d0, d1)?)])
        }))
    }

    /// Transpose of the last two dimensions (a view). Errors for rank < 2.
    pub fn t(&self) -> Result<Tensor> {
        let r = self.rank();
        if r < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs rank >= 2, shape is {:?}", self.shape()),
            ));
        }
        self.transpose(r - 2, r - 1)
    }

    /// Reorder dimensions: output dimension `i` is input dimension `perm[i]` (a view).
    ///
    /// Errors unless `perm` is a permutation of `0..rank`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of shape {:?}",
                    self.shape()
                ),
            ));
        }
        let mut inverse = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        let layout = self.layout().permute(perm);
        Ok(self.view_with(layout, "permute", move |g| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    /// Elements `start..start + len` of dimension `dim` (a view; PyTorch `narrow`).
    ///
    /// Errors when the range exceeds the dimension.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        self.check_dim("narrow", dim)?;
        let size = self.shape()[dim];
        if start.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} exceeds dim {dim} of shape {:?}",
                    start.saturating_add(len),
                    self.shape()
                ),
            ));
        }
        let layout = self.layout().narrow(dim, start, len);
        let in_shape = self.shape().to_vec();
        Ok(self.view_with(layout, "narrow", move |g| {
            // Pad the gradient with zeros before and after the slice.
            let mut parts = Vec::with_capacity(3);
            let mut before = in_shape.clone();
            before[dim] = start;
            let mut after = in_shape.clone();
            after[dim] = size - start - len;
            parts.push(Tensor::zeros(&before, g.dtype()));
            parts.push(g.clone());
            parts.push(Tensor::zeros(&after, g.dtype()));
            let refs: Vec<&Tensor> = parts.iter().collect();
            Ok(vec![Some(Tensor::cat(&refs, dim)?)])
        }))
    }

    /// View broadcast to `shape` (NumPy rules; stride 0 on repeated dims; PyTorch `expand`).
    pub fn broadcast_as(&self, shape: &[usize]) -> Result<Tensor> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_to("broadcast_as", shape)?;
        // The engine sums the gradient back to the input shape.
        Ok(self.view_with(layout, "broadcast_as", |g| Ok(vec![Some(g.clone())])))
    }

    /// Insert a dimension of size 1 at `dim` (`dim <= rank`).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim,
                shape: self.shape().to_vec(),
            });
        }
        let mut shape = self.shape().to_vec();
        shape.insert(dim, 1);
        self.reshape(&shape)
    }

    /// Remove dimension `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        self.check_dim("squeeze", dim)?;
        if self.shape()[dim] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("dim {dim} of shape {:?} is not 1", self.shape()),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape.remove(dim);
        self.reshape(&shape)
    }
}
