//! The affine map `y = x Wᵀ + b` (PyTorch `F.linear`) as one op: the bias is added to each
//! block of the product right after it is computed (still in cache), so there is no separate
//! pass (or tensor) for the addition, and the backward gives `W` a dense gradient directly.

use crate::{Error, Result, Tensor};

/// The shapes of a linear map: `x` `[..., in]` seen as `[rows, in]`, `W` `[out, in]`, and
/// the output shape `[..., out]`.
pub(crate) struct LinearShape {
    pub(crate) rows: usize,
    pub(crate) inp: usize,
    pub(crate) out: usize,
    pub(crate) y_shape: Vec<usize>,
}

/// `(out, in)` of a weight `[out, in]`; errors with [`Error::InvalidArgument`] naming the
/// shape when `w` is not 2-D.
pub(crate) fn weight_dims(op: &'static str, w: &Tensor) -> Result<(usize, usize)> {
    match *w.shape() {
        [out, inp] => Ok((out, inp)),
        _ => Err(Error::invalid(
            op,
            format!("weight must be 2-D [out, in], got shape {:?}", w.shape()),
        )),
    }
}

/// Checks `x` `[..., in]` (rank ≥ 1), `w` `[out, in]` and `bias` `[out]` for `op`: errors
/// with [`Error::ShapeMismatch`] when the last dim of `x` is not `in`, with
/// [`Error::InvalidArgument`] naming the shapes when `w` is not 2-D or `bias` is not `[out]`,
/// and with the dtype/device errors when the tensors disagree.
pub(crate) fn check_linear(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<LinearShape> {
    let (out, inp) = weight_dims(op, w)?;
    x.check_same(op, w)?;
    if x.rank() == 0 || x.shape()[x.rank() - 1] != inp {
        return Err(Error::ShapeMismatch {
            op,
            lhs: x.shape().to_vec(),
            rhs: w.shape().to_vec(),
        });
    }
    if let Some(b) = bias {
        b.check_same(op, w)?;
        if b.shape() != [out] {
            return Err(Error::invalid(
                op,
                format!(
                    "bias has shape {:?}, a weight of shape {:?} needs [{out}]",
                    b.shape(),
                    w.shape()
                ),
            ));
        }
    }
    let lead = &x.shape()[..x.rank() - 1];
    let mut y_shape = lead.to_vec();
    y_shape.push(out);
    Ok(LinearShape {
        rows: lead.iter().product(),
        inp,
        out,
        y_shape,
    })
}

impl Tensor {
    /// `y = x Wᵀ + b` for `self` = `x` `[..., in]`, `weight` `[out, in]` and an optional
    /// `bias` `[out]` (exactly; no broadcasting), giving `[..., out]` (PyTorch `F.linear`).
    /// One op: the bias is added to each block of the product as it is computed. Backward: `∂x = g W`, `∂W = gᵀ x` (dense,
    /// summed over all leading dims by the product), `∂b = Σ_rows g`.
    ///
    /// Errors with [`Error::ShapeMismatch`] when the last dim of `x` is not `in`, with
    /// [`Error::InvalidArgument`] naming the shapes when `weight` is not 2-D or `bias` is not
    /// `[out]`, and on dtype or device mismatches.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        let s = check_linear(OP, self, weight, bias)?;
        let (x2, w) = (self.detach().reshape(&[s.rows, s.inp])?, weight.detach());
        let y = crate::no_grad(|| x2.matmul_scaled(&w.t()?, 1.0, bias)?.reshape(&s.y_shape))?;
        let x_shape = self.shape().to_vec();
        let needs = [
            self.requires_grad(),
            weight.requires_grad(),
            bias.is_some_and(Tensor::requires_grad),
        ];
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let has_bias = bias.is_some();
        Ok(y.record(&inputs, OP, move |g| {
            let g2 = g.reshape(&[s.rows, s.out])?;
            let mut grads = vec![
                needs[0]
                    .then(|| g2.matmul(&w)?.reshape(&x_shape))
                    .transpose()?,
                needs[1].then(|| g2.t()?.matmul(&x2)).transpose()?,
            ];
            if has_bias {
                grads.push(needs[2].then(|| g2.sum(&[0], false)).transpose()?);
            }
            Ok(grads)
        }))
    }
}
