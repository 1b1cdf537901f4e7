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

/// An elementwise function applied to the output of a linear map inside the product
/// kernel ([`Tensor::linear_act`], [`crate::sigma_reparam_linear_act`]): each block of the
/// result is transformed while still in cache, so there is no separate pass over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// No activation: the plain affine map.
    Identity,
    /// GELU, tanh approximation, exactly as [`Tensor::gelu`] computes it (same values,
    /// same gradients).
    Gelu,
    /// ReLU `max(y, 0)`, exactly as [`Tensor::relu`] computes it: derivative 1 where
    /// `y > 0`, else 0 (also at the kink `y = 0`, as PyTorch), and a NaN `y` gives 0 as
    /// `Tensor::relu` does.
    Relu,
}

impl Activation {
    /// `act(y)` recorded on top of a product computed by `matmul_act`: the backward of the
    /// result is `g ⊙ act'` (from `dy`) passed to `backward`, the linear map's own.
    pub(crate) fn chain(
        dy: Option<&Tensor>,
        g: &Tensor,
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>,
    ) -> Result<Vec<Option<Tensor>>> {
        match dy {
            Some(dy) => backward(&g.mul(dy)?),
            None => backward(g),
        }
    }
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
        self.linear_act(weight, bias, Activation::Identity)
    }

    /// `act(x Wᵀ + b)`: [`Tensor::linear`] with the activation applied inside the product
    /// kernel, on each block of the result while it is in cache (no separate pass, no
    /// pre-activation tensor kept). Same values and gradients as `linear` followed by the
    /// activation's own op (e.g. [`Tensor::gelu`]), bit for bit; the backward multiplies
    /// `g` by `act'` saved by the forward, then runs `linear`'s backward. Shapes and errors
    /// as [`Tensor::linear`].
    pub fn linear_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        const OP: &str = "linear";
        let s = check_linear(OP, self, weight, bias)?;
        let (x2, w) = (self.detach().reshape(&[s.rows, s.inp])?, weight.detach());
        let needs = [
            self.requires_grad(),
            weight.requires_grad(),
            bias.is_some_and(Tensor::requires_grad),
        ];
        let with_grad = crate::is_grad_enabled() && needs.contains(&true);
        let (y, dy) = crate::no_grad(|| -> Result<_> {
            let (y, dy) = x2.matmul_act(&w.t()?, 1.0, bias, act, with_grad)?;
            let dy = dy.map(|d| d.reshape(&s.y_shape)).transpose()?;
            Ok((y.reshape(&s.y_shape)?, dy))
        })?;
        let x_shape = self.shape().to_vec();
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let has_bias = bias.is_some();
        Ok(y.record(&inputs, OP, move |g| {
            Activation::chain(dy.as_ref(), g, |g| {
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
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::on_threads;
    use crate::{gradcheck, sigma_reparam_linear, sigma_reparam_linear_act, DType, PowerIterState};
    use rand::SeedableRng;

    /// `linear_act(act)` and `sigma_reparam_linear_act(act)` give the bits of the op
    /// followed by the activation's own op (`gelu`, `relu`), in the output and in every
    /// gradient, in f32 and f64, with products large enough to be split into blocks across 1
    /// and 3 threads; without grad mode the output is the same too.
    #[test]
    fn fused_activations_match_the_op_then_the_activation_bit_for_bit() {
        type Op = fn(&Tensor) -> Result<Tensor>;
        let acts: [(Activation, Op); 2] = [
            (Activation::Gelu, Tensor::gelu),
            (Activation::Relu, Tensor::relu),
        ];
        for dtype in [DType::F32, DType::F64] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let x = Tensor::randn(&[3, 90, 70], 0.0, 1.0, dtype, &mut rng);
            let w = Tensor::randn(&[130, 70], 0.0, 0.3, dtype, &mut rng);
            let b = Tensor::randn(&[130], 0.0, 1.0, dtype, &mut rng);
            let gamma = Tensor::full(&[1], 1.5, dtype);
            let g = Tensor::randn(&[3, 90, 130], 0.0, 1.0, dtype, &mut rng);
            let state = PowerIterState::init(&w, 1e-6, 500).unwrap();
            // Output and gradients of (x, W, b, γ) of `f` on fresh leaves, as f64 bits.
            let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
                let leaves: Vec<Tensor> = [&x, &w, &b, &gamma]
                    .iter()
                    .map(|t| t.detach().requires_grad_(true).unwrap())
                    .collect();
                let y = f(&leaves).unwrap();
                y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                let bits = |t: &Tensor| -> Vec<u64> {
                    t.to_vec_f64()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                let no_grad_y = crate::no_grad(|| f(&leaves)).unwrap();
                assert_eq!(bits(&no_grad_y), bits(&y));
                let mut out = vec![bits(&y)];
                for l in &leaves {
                    out.push(l.grad().map_or(vec![], |t| bits(&t)));
                }
                out
            };
            for (act, apply) in acts {
                let plain_fused = |t: &[Tensor]| t[0].linear_act(&t[1], Some(&t[2]), act);
                let plain = |t: &[Tensor]| apply(&t[0].linear(&t[1], Some(&t[2]))?);
                let sigma_fused = |t: &[Tensor]| {
                    sigma_reparam_linear_act(&t[0], &t[1], &t[3], Some(&t[2]), &state, false, act)
                };
                let sigma = |t: &[Tensor]| {
                    apply(&sigma_reparam_linear(
                        &t[0],
                        &t[1],
                        &t[3],
                        Some(&t[2]),
                        &state,
                        false,
                    )?)
                };
                for threads in [1, 3] {
                    let want = on_threads(threads, || run(&plain));
                    assert!(want[1..4].iter().all(|g| !g.is_empty()));
                    assert!(on_threads(threads, || run(&plain_fused)) == want, "{act:?}");
                    let want = on_threads(threads, || run(&sigma));
                    assert!(want[1..].iter().all(|g| !g.is_empty()));
                    assert!(on_threads(threads, || run(&sigma_fused)) == want, "{act:?}");
                }
            }
        }
    }

    /// Fused ReLU: the values by hand (a NaN pre-activation gives 0, as `Tensor::relu`),
    /// and finite-difference gradients of the plain and σReparam linear maps with it.
    #[test]
    fn fused_relu_values_and_gradcheck() {
        let x = Tensor::from_f64s(&[1.0, -2.0, f64::NAN, 1.0], &[2, 2], DType::F64).unwrap();
        let w = Tensor::from_f64s(&[1.0, 1.0, 2.0, 0.5], &[2, 2], DType::F64).unwrap();
        let b = Tensor::from_f64s(&[0.5, 0.0], &[2], DType::F64).unwrap();
        // Row 0: [1 − 2 + 0.5, 2 − 1] = [−0.5, 1] → [0, 1]; row 1 is NaN → [0, 0].
        let y = x.linear_act(&w, Some(&b), Activation::Relu).unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), [0.0, 1.0, 0.0, 0.0]);
        let y = x.linear(&w, Some(&b)).unwrap().relu().unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), [0.0, 1.0, 0.0, 0.0]);

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F64, &mut rng);
        let w = Tensor::randn(&[5, 4], 0.0, 1.0, DType::F64, &mut rng);
        let b = Tensor::randn(&[5], 0.0, 1.0, DType::F64, &mut rng);
        let relu = Activation::Relu;
        gradcheck(
            |t| t[0].linear_act(&t[1], Some(&t[2]), relu),
            &[x.clone(), w.clone(), b.clone()],
        )
        .unwrap();
        gradcheck(
            |t| t[0].linear_act(&t[1], None, relu),
            &[x.clone(), w.clone()],
        )
        .unwrap();
        let state = PowerIterState::init(&w, 1e-9, 500).unwrap();
        let gamma = Tensor::full(&[1], 1.5, DType::F64);
        gradcheck(
            |t| sigma_reparam_linear_act(&t[0], &t[1], &t[3], Some(&t[2]), &state, false, relu),
            &[x, w, b, gamma],
        )
        .unwrap();
    }
}
