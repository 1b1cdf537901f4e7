//! Joining tensors: `cat` along an existing dim, `stack` along a new one.

use crate::dtype::with_dtype;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Concatenate `tensors` along `dim`. All must share dtype, device, rank and every other
    /// dim; zero-size parts are allowed. The gradient of each part is its slice of the
    /// output gradient.
    ///
    /// Errors when `tensors` is empty or shapes disagree outside `dim`.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        first.check_dim("cat", dim)?;
        let mut shape = first.shape().to_vec();
        shape[dim] = 0;
        for t in tensors {
            first.check_same("cat", t)?;
            let same_rest = t.rank() == first.rank()
                && (0..t.rank()).all(|d| d == dim || t.shape()[d] == first.shape()[d]);
            if !same_rest {
                return Err(Error::ShapeMismatch {
                    op: "cat",
                    lhs: first.shape().to_vec(),
                    rhs: t.shape().to_vec(),
                });
            }
            shape[dim] += t.shape()[dim];
        }
        // Output viewed as [outer, dim·inner]: each part fills a column band of every row.
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let row = shape[dim] * inner;
        let out = with_dtype!(first.dtype(), T => {
            let mut out = vec![T::default(); outer * row];
            let mut col = 0;
            for t in tensors {
                let w = t.shape()[dim] * inner;
                let v = t.to_vec::<T>()?;
                for o in 0..outer {
                    out[o * row + col..o * row + col + w].copy_from_slice(&v[o * w..(o + 1) * w]);
                }
                col += w;
            }
            Tensor::from_vec(out, &shape)?
        });
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[dim]).collect();
        Ok(out.record(tensors, "cat", move |g| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(sizes.len());
            for &s in &sizes {
                grads.push(Some(g.narrow(dim, start, s)?));
                start += s;
            }
            Ok(grads)
        }))
    }

    /// Stack equally shaped `tensors` along a new dim `dim` (`dim <= rank`).
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        Tensor::cat(&refs, dim)
    }
}
