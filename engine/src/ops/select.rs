//! Elementwise choice between two tensors by a condition: `where_cond` and `masked_fill`
//! (PyTorch `torch.where`, `Tensor.masked_fill`). All operands broadcast (NumPy rules).

use crate::cpu::fill_rows;
use crate::dtype::with_dtype;
use crate::layout::broadcast_shapes;
use crate::{Error, Result, Tensor};

/// Whether each element of `cond`, broadcast to `shape`, is nonzero (NaN counts as true,
/// as a cast to bool does in PyTorch).
fn truth(op: &'static str, cond: &Tensor, shape: &[usize]) -> Result<Vec<bool>> {
    let l = cond.layout().broadcast_to(op, shape)?;
    let (n, s) = l.inner();
    let rows = l.numel().checked_div(n).unwrap_or(0);
    // Row by row (one offset computation per row, not per element).
    with_dtype!(cond.dtype(), C => cond.with_cpu::<C, _>(op, |d, _| {
        let mut out = Vec::with_capacity(l.numel());
        for r in 0..rows {
            let o = l.row_offset(r);
            out.extend((0..n).map(|j| d[o + j * s] != C::default()));
        }
        out
    }))
}

/// `mask ? a : b` elementwise over `shape`, with `a` and `b` broadcast to it.
fn pick(
    op: &'static str,
    mask: &[bool],
    shape: &[usize],
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    let la = a.layout().broadcast_to(op, shape)?;
    let lb = b.layout().broadcast_to(op, shape)?;
    let (n, sa) = la.inner();
    let sb = lb.inner().1;
    with_dtype!(a.dtype(), T => {
        let v = a.with_cpu::<T, _>(op, |da, _| {
            b.with_cpu::<T, _>(op, |db, _| {
                let mut out = vec![T::default(); mask.len()];
                fill_rows(&mut out, n, |r, dst| {
                    let (oa, ob) = (la.row_offset(r), lb.row_offset(r));
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = if mask[r * n + j] { da[oa + j * sa] } else { db[ob + j * sb] };
                    }
                });
                out
            })
        })??;
        Tensor::from_vec(v, shape)
    })
}

/// Shared body of [`Tensor::where_cond`] and [`Tensor::masked_fill`].
fn where_op(
    op: &'static str,
    cond: &Tensor,
    on_true: &Tensor,
    on_false: &Tensor,
) -> Result<Tensor> {
    on_true.check_same(op, on_false)?;
    if cond.device() != on_true.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: cond.device(),
            rhs: on_true.device(),
        });
    }
    let shape = broadcast_shapes(op, cond.shape(), on_true.shape())?;
    let shape = broadcast_shapes(op, &shape, on_false.shape())?;
    let mask = truth(op, cond, &shape)?;
    let out = pick(op, &mask, &shape, on_true, on_false)?;
    let (rt, rf) = (on_true.requires_grad(), on_false.requires_grad());
    Ok(out.record(&[on_true, on_false], op, move |g| {
        // Selecting (not multiplying by the mask) keeps an infinite upstream gradient from
        // turning into NaN on the unselected side.
        let zero = Tensor::zeros(&[], g.dtype());
        Ok(vec![
            rt.then(|| pick(op, &mask, g.shape(), g, &zero))
                .transpose()?,
            rf.then(|| pick(op, &mask, g.shape(), &zero, g))
                .transpose()?,
        ])
    }))
}

impl Tensor {
    /// `on_true` where `cond` is nonzero, else `on_false`, elementwise (PyTorch
    /// `torch.where(cond, a, b)`). The three shapes broadcast together (NumPy rules) to the
    /// output shape. `cond` may have either float dtype and is not differentiated; the
    /// gradient goes to `on_true` where the condition holds and to `on_false` elsewhere.
    ///
    /// Errors when the shapes do not broadcast, `on_true` and `on_false` differ in dtype, or
    /// the devices differ.
    pub fn where_cond(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        where_op("where_cond", cond, on_true, on_false)
    }

    /// `self` with the elements where `mask` is nonzero replaced by `value` (PyTorch
    /// `masked_fill`, out-of-place: `self` and `mask` broadcast together). With
    /// `value = -inf` it builds causal attention masks. Filled positions get zero gradient.
    ///
    /// Errors when the shapes do not broadcast or the devices differ.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::scalar(value, self.dtype());
        where_op("masked_fill", mask, &fill, self)
    }
}
