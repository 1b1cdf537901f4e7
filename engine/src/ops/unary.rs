//! Elementwise unary ops; the forward also computes `f'(x)` when a gradient will be
//! needed, so each backward is one product `g ⊙ f'(x)`.

use crate::cpu::{dense, map, map_pair};
use crate::dtype::with_dtype;
use crate::{Float, Result, Tensor};

/// √(2/π), the constant of the tanh form of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh form of GELU.
const GELU_CUBIC: f64 = 0.044715;
/// 1/√2, for the erf form of GELU.
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π), the standard normal density at 0.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

#[derive(Clone, Copy, Debug)]
enum Unary {
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Relu,
    GeluTanh,
    GeluErf,
    Powf(f64),
}

impl Unary {
    fn name(self) -> &'static str {
        match self {
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
            Unary::Relu => "relu",
            Unary::GeluTanh => "gelu",
            Unary::GeluErf => "gelu_erf",
            Unary::Powf(_) => "powf",
        }
    }

    /// `y = f(x)` and, `with_grad`, also `f'(x)` computed in the same pass (the backward
    /// is then one product `g ⊙ f'(x)`, and GELU's tanh is evaluated once, not again in the
    /// backward). Each arm pairs `f` with its derivative `d(x, y)`, inlined into its own
    /// vectorizable loop.
    fn forward<T: Float>(self, x: &[T], with_grad: bool) -> (Vec<T>, Option<Vec<T>>) {
        let c = |v: f64| T::from_f64_lossy(v);
        let (one, half) = (T::one(), c(0.5));
        match self {
            Unary::Exp => kernel(x, with_grad, |v| v.exp(), |_, y| y),
            Unary::Log => kernel(x, with_grad, |v| v.ln(), |x, _| one / x),
            Unary::Sqrt => kernel(x, with_grad, |v| v.sqrt(), |_, y| half / y),
            Unary::Tanh => kernel(x, with_grad, |v| v.tanh(), |_, y| one - y * y),
            Unary::Sigmoid => kernel(x, with_grad, sigmoid, |_, y| y * (one - y)),
            Unary::Relu => kernel_with(x, with_grad, relu, relu_and_grad),
            Unary::GeluTanh => kernel_with(x, with_grad, gelu_tanh, gelu_tanh_and_grad),
            Unary::GeluErf => {
                let (r, r2pi) = (c(FRAC_1_SQRT_2), c(FRAC_1_SQRT_2PI));
                kernel(
                    x,
                    with_grad,
                    |v| half * v * (one + (v * r).erf()),
                    |x, _| half * (one + (x * r).erf()) + x * r2pi * (-(x * x) * half).exp(),
                )
            }
            Unary::Powf(p) => {
                let (p, q) = (c(p), c(p - 1.0));
                kernel(x, with_grad, |v| v.powf(p), |x, _| p * x.powf(q))
            }
        }
    }
}

/// `f` over `x`, and with `with_grad` also `d(x, f(x))` from the same loop.
fn kernel<T: Float>(
    x: &[T],
    with_grad: bool,
    f: impl Fn(T) -> T + Sync,
    d: impl Fn(T, T) -> T + Sync,
) -> (Vec<T>, Option<Vec<T>>) {
    kernel_with(x, with_grad, &f, |v| {
        let y = f(v);
        (y, d(v, y))
    })
}

/// `f` over `x`, or with `with_grad` the pairs `(f(x), f'(x))` from `fd`.
fn kernel_with<T: Float>(
    x: &[T],
    with_grad: bool,
    f: impl Fn(T) -> T + Sync,
    fd: impl Fn(T) -> (T, T) + Sync,
) -> (Vec<T>, Option<Vec<T>>) {
    if with_grad {
        let (y, dy) = map_pair(x, fd);
        (y, Some(dy))
    } else {
        (map(x, f), None)
    }
}

/// ReLU of one value: `x` where `x > 0`, else 0 (so NaN gives 0).
#[inline(always)]
pub(crate) fn relu<T: Float>(x: T) -> T {
    relu_and_grad(x).0
}

/// ReLU and its derivative at `x`: `(x, 1)` where `x > 0`, else `(0, 0)` (the convention
/// at the kink, `relu'(0) = 0`, is PyTorch's). Shared by [`Tensor::relu`] and the fused
/// `linear_act`, so both give the same bits.
#[inline(always)]
pub(crate) fn relu_and_grad<T: Float>(x: T) -> (T, T) {
    if x > T::zero() {
        (x, T::one())
    } else {
        (T::zero(), T::zero())
    }
}

/// GELU, tanh approximation, of one value (see [`gelu_tanh_parts`]).
#[inline(always)]
pub(crate) fn gelu_tanh<T: Float>(x: T) -> T {
    x * gelu_tanh_parts(x).0
}

/// GELU, tanh approximation, and its derivative at `x`, from one exponential (see
/// [`gelu_tanh_parts`]). Shared by [`Tensor::gelu`] and the fused `linear_act`, so both give
/// the same bits.
#[inline(always)]
pub(crate) fn gelu_tanh_and_grad<T: Float>(x: T) -> (T, T) {
    let c = |v: f64| T::from_f64_lossy(v);
    let (k, a) = (c(SQRT_2_OVER_PI), c(GELU_CUBIC));
    let (p, e) = gelu_tanh_parts(x);
    (
        x * p,
        p + c(2.0) * x * e * p * p * k * (T::one() + c(3.0) * a * x * x),
    )
}

/// GELU-tanh through the logistic function: with `z = √(2/π)·(x + 0.044715·x³)`,
/// `(1 + tanh z)/2 = σ(2z) = p = 1/(1 + e)` for `e = e^{−2z}`, so `gelu(x) = x·p` and
/// `gelu'(x) = p + 2x·e·p²·√(2/π)·(1 + 3·0.044715·x²)` (using `1 − tanh² z = 4e·p²`).
/// Returns `(p, e)`. Unlike `1 + tanh z`, `p` keeps its relative accuracy deep in the
/// negative tail, so tiny values and slopes there are not rounded to 0. The exponent is
/// clamped at 80, where `e ≈ 5.5·10³⁴` is still finite in f32 (no `∞·0`), and
/// [`Float::fast_exp`] is branch-free, so the loops over this vectorize.
#[inline(always)]
fn gelu_tanh_parts<T: Float>(x: T) -> (T, T) {
    let (k, a) = (
        T::from_f64_lossy(SQRT_2_OVER_PI),
        T::from_f64_lossy(GELU_CUBIC),
    );
    let w = -(k + k) * (x + a * x * x * x);
    let limit = T::from_f64_lossy(80.0);
    let e = (if w < limit { w } else { limit }).fast_exp();
    (T::one() / (T::one() + e), e)
}

/// The logistic sigmoid of one value, as [`Tensor::sigmoid`] computes it (shared with
/// [`Tensor::glu`], so both give the same bits).
pub(crate) fn sigmoid<T: Float>(v: T) -> T {
    // Two branches so that exp never overflows.
    if v >= T::zero() {
        T::one() / (T::one() + (-v).exp())
    } else {
        let e = v.exp();
        e / (T::one() + e)
    }
}

impl Tensor {
    fn unary(&self, op: Unary) -> Result<Tensor> {
        let with_grad = crate::is_grad_enabled() && self.requires_grad();
        let (out, dydx) = with_dtype!(self.dtype(), T => {
            let (y, d) = self.with_cpu::<T, _>(op.name(), |d, l| op.forward(&dense(d, l), with_grad))?;
            let d = d.map(|d| Tensor::from_vec(d, self.shape())).transpose()?;
            (Tensor::from_vec(y, self.shape())?, d)
        });
        let Some(dydx) = dydx else {
            return Ok(out);
        };
        Ok(out.record(&[self], op.name(), move |g| Ok(vec![Some(g.mul(&dydx)?)])))
    }

    /// Elementwise `e^x`.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Unary::Exp)
    }

    /// Elementwise natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Unary::Log)
    }

    /// Elementwise square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(Unary::Sqrt)
    }

    /// Elementwise hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Unary::Tanh)
    }

    /// Elementwise logistic sigmoid `1 / (1 + e^{-x})`, computed without overflow.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(Unary::Sigmoid)
    }

    /// Elementwise `max(x, 0)`; the derivative at 0 is taken as 0.
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(Unary::Relu)
    }

    /// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    /// (Hendrycks & Gimpel 2016; PyTorch `gelu(approximate="tanh")`, GPT-2).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(Unary::GeluTanh)
    }

    /// GELU, exact form: `x·Φ(x) = 0.5·x·(1 + erf(x/√2))` (PyTorch `gelu()` default).
    pub fn gelu_erf(&self) -> Result<Tensor> {
        self.unary(Unary::GeluErf)
    }

    /// Elementwise `x^p` for a scalar exponent `p`.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(Unary::Powf(p))
    }

    /// Elementwise square `x²`.
    pub fn sqr(&self) -> Result<Tensor> {
        self.mul(self)
    }
}
