//! The L2 norm along one dimension and L2 normalization (PyTorch
//! `torch.linalg.vector_norm(x, 2, dim)` and `F.normalize(x, p=2, dim, eps)`).

use crate::{Error, Result, Tensor};

impl Tensor {
    /// The L2 norm `‖x‖₂ = √(Σ x²)` along `dim` (PyTorch
    /// `torch.linalg.vector_norm(x, 2, dim, keepdim)`): the shape of `self` without `dim`, or
    /// with `dim` kept as size 1 when `keepdim`. The squares are summed by [`Tensor::sum`],
    /// in its fixed order, so the result does not depend on the thread count. The norm over
    /// an empty dim is 0.
    ///
    /// Backward: `∂x = g · x / ‖x‖`, and `∂x = 0` where `‖x‖ = 0` — the minimum-norm
    /// subgradient, never NaN (PyTorch's `norm_backward` masks the zero norms the same way).
    ///
    /// Errors with [`Error::DimOutOfRange`] when `dim` is not below the rank.
    pub fn norm(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.check_dim("norm", dim)?;
        let n = crate::no_grad(|| self.sqr()?.sum(&[dim], true)?.sqrt())?;
        let (x, nd) = (self.detach(), n.detach());
        let out = n.record(&[self], "norm", move |g| {
            let zero = nd.eq(&Tensor::scalar(0.0, nd.dtype()))?;
            let scale = g.div(&nd)?.masked_fill(&zero, 0.0)?;
            Ok(vec![Some(x.mul(&scale)?)])
        });
        if keepdim {
            Ok(out)
        } else {
            out.squeeze(dim)
        }
    }

    /// `x / max(‖x‖₂, eps)` along `dim` (PyTorch `F.normalize(x, p=2, dim, eps)`, whose
    /// default `eps` is 1e-12): unit vectors, and vectors shorter than `eps` (the zero
    /// vector included) divided by `eps`. Same shape as `self`.
    ///
    /// Built from [`Tensor::norm`], [`Tensor::maximum`] and [`Tensor::div`], so the gradient
    /// is finite everywhere: `(g − y ⟨g, y⟩) / ‖x‖` where `‖x‖ ≥ eps`, and `g / eps` where
    /// `‖x‖ < eps` (exactly `g / eps` at `x = 0`).
    ///
    /// Errors with [`Error::DimOutOfRange`] when `dim` is not below the rank, and with
    /// [`Error::InvalidArgument`] unless `eps` is finite and > 0 (with `eps = 0` a zero
    /// vector would give NaN).
    pub fn normalize(&self, dim: usize, eps: f64) -> Result<Tensor> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::invalid(
                "normalize",
                format!("eps must be finite and > 0, got {eps}"),
            ));
        }
        let denom = self
            .norm(dim, true)?
            .maximum(&Tensor::scalar(eps, self.dtype()))?;
        self.div(&denom)
    }
}

#[cfg(test)]
mod tests {
    use crate::{gradcheck, DType, Error, Tensor};
    use rand::SeedableRng;

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_f64s(v, shape, DType::F64).unwrap()
    }

    /// Gradient of `Σ f(x) ⊙ r` with respect to `x`.
    fn grad(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, r: &Tensor) -> Vec<f64> {
        let x = x.detach().requires_grad_(true).unwrap();
        let y = f(&x);
        y.mul(r).unwrap().sum_all().unwrap().backward().unwrap();
        x.grad().unwrap().to_vec_f64().unwrap()
    }

    #[test]
    fn norm_and_normalize_values() {
        // Rows [3, 4], [0, 0], [−6, 8]; columns [3, 0, −6] and [4, 0, 8].
        let x = t(&[3.0, 4.0, 0.0, 0.0, -6.0, 8.0], &[3, 2]);
        let n = x.norm(1, false).unwrap();
        assert_eq!(n.shape(), [3]);
        assert_eq!(n.to_vec_f64().unwrap(), [5.0, 0.0, 10.0]);
        let n = x.norm(0, true).unwrap();
        assert_eq!(n.shape(), [1, 2]);
        assert_eq!(n.to_vec_f64().unwrap(), [45f64.sqrt(), 80f64.sqrt()]);
        let y = x.normalize(1, 1e-12).unwrap();
        assert_eq!(y.shape(), [3, 2]);
        assert_eq!(y.to_vec_f64().unwrap(), [0.6, 0.8, 0.0, 0.0, -0.6, 0.8]);
        // Shorter than eps: divided by eps.
        let y = t(&[0.3, 0.4], &[1, 2]).normalize(1, 2.0).unwrap();
        assert_eq!(y.to_vec_f64().unwrap(), [0.15, 0.2]);
        // An empty dim has norm 0; f32 works the same.
        let e = Tensor::zeros(&[2, 0], DType::F32);
        assert_eq!(e.norm(1, false).unwrap().to_vec_f64().unwrap(), [0.0, 0.0]);
        let x32 = Tensor::from_f64s(&[3.0, 4.0], &[2], DType::F32).unwrap();
        assert_eq!(x32.norm(0, false).unwrap().to_vec::<f32>().unwrap(), [5.0]);
    }

    #[test]
    fn gradcheck_norm_and_normalize_random() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (shape, dim) in [(vec![4, 5], 1), (vec![3, 4, 2], 1), (vec![2, 3, 4], 0)] {
            let x = Tensor::randn(&shape, 0.0, 1.0, DType::F64, &mut rng);
            for keepdim in [false, true] {
                gradcheck(|t| t[0].norm(dim, keepdim), std::slice::from_ref(&x)).unwrap();
            }
            gradcheck(|t| t[0].normalize(dim, 1e-12), std::slice::from_ref(&x)).unwrap();
            // Every vector shorter than eps: the linear branch x / eps.
            gradcheck(|t| t[0].mul_scalar(1e-3)?.normalize(dim, 0.5), &[x]).unwrap();
        }
        // A strided input: the norm of the columns of a transposed view.
        let x = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut rng);
        gradcheck(|t| t[0].t()?.normalize(1, 1e-12), &[x]).unwrap();
    }

    /// At an all-zero row the gradient of `norm` is exactly 0 and that of `normalize` is
    /// exactly `r / eps`; the other rows get `r/‖x‖`-style values (finite, checked above).
    #[test]
    fn gradients_at_a_zero_row_are_the_documented_values() {
        let x = t(&[0.0, 0.0, 0.0, 1.0, 2.0, 2.0], &[2, 3]);
        let r = t(&[0.5, -1.5, 2.0, 3.0, 0.0, -3.0], &[2, 3]);
        let rn = t(&[0.7, -2.0], &[2]);
        let g = grad(|x| x.norm(1, false).unwrap(), &x, &rn);
        // Row 1: −2 · x / 3.
        assert_eq!(g, [0.0, 0.0, 0.0, -2.0 / 3.0, -4.0 / 3.0, -4.0 / 3.0]);
        for eps in [1e-12, 0.25] {
            let g = grad(|x| x.normalize(1, eps).unwrap(), &x, &r);
            assert_eq!(g[..3], [0.5 / eps, -1.5 / eps, 2.0 / eps]);
            // Row 1, y = [1, 2, 2]/3, ⟨r, y⟩ = −1: (r + y) / 3.
            let want = [
                (3.0 + 1.0 / 3.0) / 3.0,
                (2.0 / 3.0) / 3.0,
                (-3.0 + 2.0 / 3.0) / 3.0,
            ];
            for (a, b) in g[3..].iter().zip(want) {
                assert!((a - b).abs() < 1e-15, "{g:?}");
            }
        }
    }

    #[test]
    fn bad_dims_and_eps_are_errors() {
        let x = t(&[1.0, 2.0], &[2]);
        assert!(matches!(x.norm(1, false), Err(Error::DimOutOfRange { .. })));
        assert!(matches!(
            x.normalize(1, 1e-12),
            Err(Error::DimOutOfRange { .. })
        ));
        for eps in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = x.normalize(0, eps).unwrap_err().to_string();
            assert!(err.contains("eps must be finite and > 0"), "{err}");
        }
    }
}
