//! The position-wise feed-forward network of a transformer block, and the two-layer MLP of
//! other models (ViT heads, SimCLR projection heads, the ReLU MLP of the speech model).

use crate::module::join;
use crate::{LinearLayer, Module, Result, TensorRole};
use engine::{Activation, Tensor};

/// A two-layer MLP `proj(act(fc(x)))`: `fc` `[d_in → hidden]`, `proj` `[hidden → d_out]`,
/// the activation computed inside `fc`'s product ([`Tensor::linear_act`]). A transformer
/// block's is [`Mlp::new`]: GELU (tanh form, GPT-2's), `fc` `[d, hidden]`, `proj`
/// `[hidden, d]`.
#[derive(Debug)]
pub struct Mlp {
    fc: LinearLayer,
    proj: LinearLayer,
    act: Activation,
}

impl Mlp {
    /// The GELU MLP of a transformer block, `[..., d_model]` to `[..., d_model]` through
    /// `hidden`, with linears built by `make(in, out)`: `fc` first, then `proj`.
    pub fn new(
        d_model: usize,
        hidden: usize,
        make: impl FnMut(usize, usize) -> Result<LinearLayer>,
    ) -> Result<Self> {
        Mlp::with_activation(d_model, hidden, d_model, Activation::Gelu, make)
    }

    /// An MLP `[..., d_in]` to `[..., d_out]` through `hidden` with activation `act` (e.g.
    /// [`Activation::Relu`], the speech model's), with linears built by `make(in, out)`:
    /// `fc = make(d_in, hidden)` first, then `proj = make(hidden, d_out)`. Errors as `make`.
    pub fn with_activation(
        d_in: usize,
        hidden: usize,
        d_out: usize,
        act: Activation,
        mut make: impl FnMut(usize, usize) -> Result<LinearLayer>,
    ) -> Result<Self> {
        Ok(Mlp {
            fc: make(d_in, hidden)?,
            proj: make(hidden, d_out)?,
            act,
        })
    }

    /// `proj(act(fc(x)))` for `x` `[..., d_in]`, giving `[..., d_out]`. Errors when the last
    /// dim of `x` is not `d_in` (naming both shapes).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.fc.forward_act(x, self.act)?)
    }

    /// The hidden activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// The linears `fc` and `proj` with their names.
    pub fn linears(&self) -> [(&'static str, &LinearLayer); 2] {
        [("fc", &self.fc), ("proj", &self.proj)]
    }
}

impl Module for Mlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.fc.visit(&join(prefix, "fc"), f);
        self.proj.visit(&join(prefix, "proj"), f);
    }

    fn set_training(&self, training: bool) {
        self.fc.set_training(training);
        self.proj.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LinearKind, ModuleExt};
    use engine::{gradcheck, DType};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn plain(rng: &mut ChaCha8Rng) -> impl FnMut(usize, usize) -> Result<LinearLayer> + '_ {
        |i, o| LinearLayer::new(LinearKind::Plain, i, o, true, DType::F64, rng)
    }

    /// `Mlp::new` is the GELU MLP `[d, h] → [h, d]`: the same parameters (drawn in the same
    /// order) and the same output bits as `with_activation(d, h, d, Gelu)`, and as the two
    /// linears applied by hand.
    #[test]
    fn new_is_the_gelu_mlp() {
        let x = Tensor::randn(
            &[2, 3, 4],
            0.0,
            1.0,
            DType::F64,
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        let a = Mlp::new(4, 6, plain(&mut ChaCha8Rng::seed_from_u64(7))).unwrap();
        let b = Mlp::with_activation(
            4,
            6,
            4,
            Activation::Gelu,
            plain(&mut ChaCha8Rng::seed_from_u64(7)),
        )
        .unwrap();
        assert_eq!(a.activation(), Activation::Gelu);
        let (pa, pb) = (a.state_dict().unwrap(), b.state_dict().unwrap());
        assert_eq!(
            pa.keys().collect::<Vec<_>>(),
            ["fc.bias", "fc.weight", "proj.bias", "proj.weight"]
        );
        assert_eq!(pa["fc.weight"].shape(), [6, 4]);
        assert_eq!(pa["proj.weight"].shape(), [4, 6]);
        for (k, v) in &pa {
            assert_eq!(v.to_vec_f64().unwrap(), pb[k].to_vec_f64().unwrap(), "{k}");
        }
        let y = a.forward(&x).unwrap().to_vec_f64().unwrap();
        assert_eq!(y, b.forward(&x).unwrap().to_vec_f64().unwrap());
        let h = x
            .linear(&pa["fc.weight"], Some(&pa["fc.bias"]))
            .unwrap()
            .gelu()
            .unwrap();
        let by_hand = h
            .linear(&pa["proj.weight"], Some(&pa["proj.bias"]))
            .unwrap();
        assert_eq!(y, by_hand.to_vec_f64().unwrap());
    }

    /// A ReLU MLP `3 → 4 → 2` with weights set by hand (no biases): values by hand; then,
    /// with random weights, plain and σReparam, a gradient check through both linears.
    #[test]
    fn relu_mlp_values_and_gradcheck() {
        let t = |v: &[f64], s: &[usize]| Tensor::from_f64s(v, s, DType::F64).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mlp = Mlp::with_activation(3, 4, 2, Activation::Relu, |i, o| {
            LinearLayer::new(LinearKind::Plain, i, o, false, DType::F64, &mut rng)
        })
        .unwrap();
        // h = relu([x₀, x₁, x₂, x₀ + x₁ + x₂]); y = [Σ h, h₀ − h₁ + 2h₂].
        let fc = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let proj = [1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 2.0, 0.0];
        let state = [
            ("fc.weight".to_string(), t(&fc, &[4, 3])),
            ("proj.weight".to_string(), t(&proj, &[2, 4])),
        ];
        mlp.load_state_dict(&state.into_iter().collect()).unwrap();
        // [1, −2, 3]: h = [1, 0, 3, 2]; [−1, 0.5, −0.25]: h = [0, 0.5, 0, 0].
        let x = t(&[1.0, -2.0, 3.0, -1.0, 0.5, -0.25], &[2, 3]);
        let y = mlp.forward(&x).unwrap();
        assert_eq!(y.shape(), [2, 2]);
        assert_eq!(y.to_vec_f64().unwrap(), [6.0, 7.0, 0.5, -0.5]);

        let x = Tensor::randn(&[2, 3, 3], 0.0, 1.0, DType::F64, &mut rng);
        for kind in [
            LinearKind::Plain,
            LinearKind::SigmaReparam(engine::GammaInit::One),
        ] {
            let mlp = Mlp::with_activation(3, 5, 2, Activation::Relu, |i, o| {
                LinearLayer::new(kind, i, o, true, DType::F64, &mut rng)
            })
            .unwrap();
            mlp.eval();
            gradcheck(
                |t| Ok(mlp.forward(&t[0]).unwrap()),
                std::slice::from_ref(&x),
            )
            .unwrap();
        }
    }
}
