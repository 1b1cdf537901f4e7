//! The class token of a ViT (Dosovitskiy et al., ICLR 2021) and the pooling of a sequence
//! of token vectors into one vector per example.

use crate::module::join;
use crate::{Error, Module, Result, TensorRole};
use engine::{DType, Tensor};

/// A learned class token (ViT's `[class]` embedding; timm's `cls_token`) prepended to every
/// sequence, whose output position then summarizes the sequence ([`Pooling::Cls`]).
///
/// Parameter: `cls` `[1, 1, d_model]`.
#[derive(Debug)]
pub struct ClsToken {
    cls: Tensor,
}

impl ClsToken {
    /// A token drawn from N(0, `std`²); ViT and DeiT use `std` = 0.02 (timm's
    /// `trunc_normal_(std=0.02)`, here not truncated).
    pub fn new(d_model: usize, std: f64, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        let cls = Tensor::randn(&[1, 1, d_model], 0.0, std, dtype, rng).requires_grad_(true)?;
        Ok(ClsToken { cls })
    }

    /// `x` `[b, t, d_model]` with the token prepended to every sequence: `[b, t + 1,
    /// d_model]`, position 0 the token. Its gradient is the sum over the batch of the
    /// output gradient at position 0.
    ///
    /// Errors with [`Error::Config`] naming the shape unless `x` is `[b, t, d_model]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.cls.shape()[2];
        match *x.shape() {
            [b, _, dx] if dx == d => {
                let cls = self.cls.broadcast_as(&[b, 1, d])?;
                Ok(Tensor::cat(&[&cls, x], 1)?)
            }
            _ => Err(Error::Config(format!(
                "ClsToken: needs a sequence [batch, tokens, {d}], got shape {:?}",
                x.shape()
            ))),
        }
    }

    /// The token `[1, 1, d_model]`.
    pub fn token(&self) -> &Tensor {
        &self.cls
    }
}

impl Module for ClsToken {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "cls"), &self.cls, TensorRole::Parameter);
    }
}

/// How a sequence `[b, t, d]` becomes one vector per example `[b, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The vector at position 0 (the class token's, after [`ClsToken::forward`]; ViT).
    Cls,
    /// The mean over the `t` positions (global average pooling, as timm's
    /// `global_pool="avg"`).
    Mean,
}

impl Pooling {
    /// `x` `[b, t, d]` pooled to `[b, d]`.
    ///
    /// Errors with [`Error::Config`] naming the shape unless `x` is 3-D with `t ≥ 1`.
    pub fn pool(self, x: &Tensor) -> Result<Tensor> {
        if !matches!(*x.shape(), [_, t, _] if t > 0) {
            return Err(Error::Config(format!(
                "pool: needs a sequence [batch, tokens, d_model] with at least one token, got \
                 shape {:?}",
                x.shape()
            )));
        }
        Ok(match self {
            Pooling::Cls => x.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => x.mean(&[1], false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use engine::gradcheck;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_f64s(v, shape, DType::F64).unwrap()
    }

    #[test]
    fn cls_token_prepends_and_pooling_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let tok = ClsToken::new(2, 0.02, DType::F64, &mut rng).unwrap();
        let c = tok.token().to_vec_f64().unwrap();
        assert_eq!(tok.named_parameters()[0].0, "cls");
        assert!(c.iter().all(|v| v.abs() < 0.2) && c[0] != c[1]);
        // b = 2, t = 2, d = 2.
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 2, 2]);
        let y = tok.forward(&x).unwrap();
        assert_eq!(y.shape(), [2, 3, 2]);
        let want = [
            c[0], c[1], 1.0, 2.0, 3.0, 4.0, c[0], c[1], 5.0, 6.0, 7.0, 8.0,
        ];
        assert_eq!(y.to_vec_f64().unwrap(), want);
        assert_eq!(
            Pooling::Cls.pool(&y).unwrap().to_vec_f64().unwrap(),
            [c[0], c[1], c[0], c[1]]
        );
        let mean = Pooling::Mean.pool(&x).unwrap();
        assert_eq!(mean.shape(), [2, 2]);
        assert_eq!(mean.to_vec_f64().unwrap(), [2.0, 3.0, 6.0, 7.0]);
        // The token's gradient sums position 0 over the batch.
        let g = t(
            &[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0],
            &[2, 3, 2],
        );
        y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            tok.token().grad().unwrap().to_vec_f64().unwrap(),
            [11.0, 22.0]
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let tok = ClsToken::new(3, 0.02, DType::F64, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let err = tok
            .forward(&Tensor::zeros(&[2, 4, 2], DType::F64))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("[batch, tokens, 3], got shape [2, 4, 2]"),
            "{err}"
        );
        assert!(tok.forward(&Tensor::zeros(&[4, 3], DType::F64)).is_err());
        for p in [Pooling::Cls, Pooling::Mean] {
            for shape in [&[2, 0, 3][..], &[2, 3]] {
                let err = p.pool(&Tensor::zeros(shape, DType::F64)).unwrap_err();
                assert!(
                    err.to_string().contains(&format!("got shape {shape:?}")),
                    "{err}"
                );
            }
        }
    }

    /// Finite differences through the token (as an input: `cls` broadcast and prepended
    /// exactly as the module does) and both poolings.
    #[test]
    fn gradcheck_cls_token_and_pooling() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = Tensor::randn(&[2, 3, 4], 0.0, 1.0, DType::F64, &mut rng);
        let tok = ClsToken::new(4, 1.0, DType::F64, &mut rng).unwrap();
        let cls = tok.token().detach();
        for p in [Pooling::Cls, Pooling::Mean] {
            gradcheck(|t| Ok(p.pool(&t[0]).unwrap()), std::slice::from_ref(&x)).unwrap();
            let with_token = |t: &[Tensor]| {
                let module = ClsToken { cls: t[1].clone() };
                Ok(p.pool(&module.forward(&t[0]).unwrap()).unwrap())
            };
            gradcheck(with_token, &[x.clone(), cls.clone()]).unwrap();
        }
        gradcheck(
            |t| Ok(ClsToken { cls: t[1].clone() }.forward(&t[0]).unwrap()),
            &[x, cls],
        )
        .unwrap();
    }
}
