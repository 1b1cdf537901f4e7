//! Linear layers: the plain affine map and its σReparam version (Zhai et al., ICML 2023,
//! arXiv 2303.06296), plus [`LinearLayer`] to choose between them by configuration.

use crate::module::join;
use crate::{Module, Result, TensorRole};
use engine::{sigma_reparam_linear_act, Activation, DType, GammaInit, PowerIterState, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Stopping rule of the power iteration at initialization: `‖u_k − u_{k−1}‖₂ ≤ INIT_TOL`.
const INIT_TOL: f64 = 1e-6;
/// Cap on the initial power iteration (σ is accurate long before the vectors settle when the
/// top two singular values are close).
const INIT_MAX_ITERS: usize = 500;

/// PyTorch's default initialization of `nn.Linear` and `nn.Conv1d`: a weight of `shape`
/// `[out, ...]` and a bias `[out]` uniform in `[−k, k)` with `k = 1/√fan_in`, `fan_in` the
/// product of `shape[1..]` (for `fan_in = 0`, `k = 0`).
pub(crate) fn init_weight_bias(
    shape: &[usize],
    bias: bool,
    dtype: DType,
    rng: &mut impl rand::Rng,
) -> Result<(Tensor, Option<Tensor>)> {
    let fan_in: usize = shape[1..].iter().product();
    let k = if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f64).sqrt()
    };
    let weight = Tensor::rand(shape, -k, k, dtype, rng).requires_grad_(true)?;
    let bias = if bias {
        Some(Tensor::rand(&shape[..1], -k, k, dtype, rng).requires_grad_(true)?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// The affine map `y = x Wᵀ + b` (PyTorch `nn.Linear`).
///
/// Parameters: `weight` `[out, in]`, `bias` `[out]` (optional).
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer with PyTorch's default initialization (weight and bias uniform in
    /// `[−1/√in, 1/√in)`), drawn from `rng`.
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        let (weight, bias) = init_weight_bias(&[out_features, in_features], bias, dtype, rng)?;
        Ok(Linear { weight, bias })
    }

    /// `y = x Wᵀ + b` for `x` `[..., in]` (rank ≥ 1), giving `[..., out]`.
    ///
    /// Errors when the last dim of `x` is not `in` (naming both shapes) or dtypes differ.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// `act(x Wᵀ + b)`, the activation fused into the product ([`Tensor::linear_act`]).
    /// Errors as [`Linear::forward`].
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        Ok(x.linear_act(&self.weight, self.bias.as_ref(), act)?)
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "weight"), &self.weight, TensorRole::Parameter);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b, TensorRole::Parameter);
        }
    }
}

/// The σReparam linear layer `y = (γ / σ(W)) · x Wᵀ + b` (Zhai et al., ICML 2023,
/// arXiv 2303.06296, eq. (2)), computed by the fused op [`engine::sigma_reparam_linear`]
/// without forming `Ŵ`.
///
/// Parameters: `weight` `[out, in]`, `gamma` `[1]`, `bias` `[out]` (optional). Buffers (saved
/// in `state_dict`, never trained): `u` `[in]`, `v` `[out]`, `sigma` `[1]`, the persistent
/// power-iteration state. In training mode (the default) every forward runs one power step
/// and stores it; in eval mode the state is frozen.
#[derive(Debug)]
pub struct SigmaReparamLinear {
    weight: Tensor,
    gamma: Tensor,
    bias: Option<Tensor>,
    state: PowerIterState,
    training: AtomicBool,
}

impl SigmaReparamLinear {
    /// A layer with PyTorch's default initialization of `W₀` and `b` (uniform in
    /// `[−1/√in, 1/√in)`, drawn from `rng`), `u`, `v`, `σ` from power iteration on `W₀` run
    /// to convergence, and `γ₀` per `gamma_init` (`σ(W₀)` so that `Ŵ = W₀`, or 1).
    pub fn new(
        in_features: usize,
        out_features: usize,
        bias: bool,
        gamma_init: GammaInit,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        let (weight, bias) = init_weight_bias(&[out_features, in_features], bias, dtype, rng)?;
        let state = PowerIterState::init(&weight, INIT_TOL, INIT_MAX_ITERS)?;
        let gamma = match gamma_init {
            GammaInit::Sigma => state.sigma().copy()?,
            GammaInit::One => Tensor::ones(&[1], dtype),
        }
        .requires_grad_(true)?;
        Ok(SigmaReparamLinear {
            weight,
            gamma,
            bias,
            state,
            training: AtomicBool::new(true),
        })
    }

    /// `y = (γ / max(σ, ε)) · x Wᵀ + b` for `x` `[..., in]` (rank ≥ 1), giving `[..., out]`;
    /// in training mode also one power step, persisted into the buffers.
    ///
    /// Errors when the last dim of `x` is not `in` (naming both shapes) or dtypes differ.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// `act(y)` for the layer's output `y`, the activation fused into the product
    /// ([`engine::sigma_reparam_linear_act`]). Errors as [`SigmaReparamLinear::forward`].
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        Ok(sigma_reparam_linear_act(
            x,
            &self.weight,
            &self.gamma,
            self.bias.as_ref(),
            &self.state,
            self.is_training(),
            act,
        )?)
    }

    /// The raw spectral-norm estimate `σ(W)` of the last training-mode forward (or of the
    /// initialization), unclamped. Not `γ`: the effective spectral norm of `Ŵ` is `γ`.
    pub fn sigma(&self) -> f64 {
        self.state.sigma().item().expect("sigma holds one element")
    }

    /// The learned scale `γ`, i.e. the spectral norm of the effective weight `Ŵ`.
    pub fn gamma(&self) -> f64 {
        self.gamma.item().expect("gamma holds one element")
    }

    /// The weight `W` `[out, in]` (before reparametrization).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The power-iteration state (`u`, `v`, `σ`).
    pub fn state(&self) -> &PowerIterState {
        &self.state
    }

    /// Whether forwards run (and persist) a power step.
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }
}

impl Module for SigmaReparamLinear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "weight"), &self.weight, TensorRole::Parameter);
        f(join(prefix, "gamma"), &self.gamma, TensorRole::Parameter);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b, TensorRole::Parameter);
        }
        f(join(prefix, "u"), self.state.u(), TensorRole::Buffer);
        f(join(prefix, "v"), self.state.v(), TensorRole::Buffer);
        f(
            join(prefix, "sigma"),
            self.state.sigma(),
            TensorRole::Buffer,
        );
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}

/// Which linear layer to build: plain, or σReparam with a choice of `γ₀`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKind {
    /// [`Linear`].
    Plain,
    /// [`SigmaReparamLinear`] with the given `γ₀`.
    SigmaReparam(GammaInit),
}

/// A linear layer of either kind, chosen at run time (for models that switch every linear
/// to σReparam by configuration).
#[derive(Debug)]
pub enum LinearLayer {
    Plain(Linear),
    SigmaReparam(SigmaReparamLinear),
}

impl LinearLayer {
    /// A layer of `kind` mapping `[..., in_features]` to `[..., out_features]`; see
    /// [`Linear::new`] and [`SigmaReparamLinear::new`].
    pub fn new(
        kind: LinearKind,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        Ok(match kind {
            LinearKind::Plain => {
                LinearLayer::Plain(Linear::new(in_features, out_features, bias, dtype, rng)?)
            }
            LinearKind::SigmaReparam(g) => LinearLayer::SigmaReparam(SigmaReparamLinear::new(
                in_features,
                out_features,
                bias,
                g,
                dtype,
                rng,
            )?),
        })
    }

    /// The layer's forward: `[..., in]` to `[..., out]`. Errors as the wrapped layer's.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// The layer's forward with `act` fused into its product (see [`Linear::forward_act`]).
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match self {
            LinearLayer::Plain(l) => l.forward_act(x, act),
            LinearLayer::SigmaReparam(l) => l.forward_act(x, act),
        }
    }

    /// The weight `W` `[out, in]` (before any reparametrization).
    pub fn weight(&self) -> &Tensor {
        match self {
            LinearLayer::Plain(l) => l.weight(),
            LinearLayer::SigmaReparam(l) => l.weight(),
        }
    }
}

impl Module for LinearLayer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        match self {
            LinearLayer::Plain(l) => l.visit(prefix, f),
            LinearLayer::SigmaReparam(l) => l.visit(prefix, f),
        }
    }

    fn set_training(&self, training: bool) {
        match self {
            LinearLayer::Plain(l) => l.set_training(training),
            LinearLayer::SigmaReparam(l) => l.set_training(training),
        }
    }
}
