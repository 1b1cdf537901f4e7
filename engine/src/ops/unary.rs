//! Elementwise unary ops; each backward is one fused kernel `g ⊙ f'(x, y)`.

use crate::cpu::{fill_rows, map};
use crate::dtype::with_dtype;
use crate::{Float, Result, Tensor};

/// √(2/π), the constant of the tanh form of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
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

    fn forward<T: Float>(self, x: &[T]) -> Vec<T> {
        let c = |v: f64| T::from_f64_lossy(v);
        match self {
            Unary::Exp => map(x, |v| v.exp()),
            Unary::Log => map(x, |v| v.ln()),
            Unary::Sqrt => map(x, |v| v.sqrt()),
            Unary::Tanh => map(x, |v| v.tanh()),
            Unary::Sigmoid => map(x, sigmoid),
            Unary::Relu => map(x, |v| if v > T::zero() { v } else { T::zero() }),
            Unary::GeluTanh => {
                let (k, a, half) = (c(SQRT_2_OVER_PI), c(0.044715), c(0.5));
                map(x, |v| {
                    half * v * (T::one() + tanh_via_exp(k * (v + a * v * v * v)))
                })
            }
            Unary::GeluErf => {
                let (r, half) = (c(FRAC_1_SQRT_2), c(0.5));
                map(x, |v| half * v * (T::one() + (v * r).erf()))
            }
            Unary::Powf(p) => {
                let p = c(p);
                map(x, |v| v.powf(p))
            }
        }
    }

    /// `g · f'(x)` where `y = f(x)`; all slices dense and of equal length.
    fn backward<T: Float>(self, x: &[T], y: &[T], g: &[T]) -> Vec<T> {
        let c = |v: f64| T::from_f64_lossy(v);
        let one = T::one();
        let d: &(dyn Fn(T, T) -> T + Sync) = match self {
            Unary::Exp => &|_, y| y,
            Unary::Log => &|x, _| one / x,
            Unary::Sqrt => &|_, y| c(0.5) / y,
            Unary::Tanh => &|_, y| one - y * y,
            Unary::Sigmoid => &|_, y| y * (one - y),
            // Convention at the kink: relu'(0) = 0 (as PyTorch).
            Unary::Relu => &|x, _| if x > T::zero() { one } else { T::zero() },
            Unary::GeluTanh => &|x, _| {
                let (k, a) = (c(SQRT_2_OVER_PI), c(0.044715));
                let t = tanh_via_exp(k * (x + a * x * x * x));
                c(0.5) * (one + t) + c(0.5) * x * (one - t * t) * k * (one + c(3.0) * a * x * x)
            },
            Unary::GeluErf => &|x, _| {
                let cdf = c(0.5) * (one + (x * c(FRAC_1_SQRT_2)).erf());
                cdf + x * c(FRAC_1_SQRT_2PI) * (-(x * x) * c(0.5)).exp()
            },
            Unary::Powf(p) => &move |x, _| c(p) * x.powf(c(p - 1.0)),
        };
        let mut out = vec![T::zero(); x.len()];
        fill_rows(&mut out, 4096.min(x.len().max(1)), |row, dst| {
            let (o, len) = (row * 4096, dst.len());
            let (g, x, y) = (&g[o..o + len], &x[o..o + len], &y[o..o + len]);
            for (((v, &g), &x), &y) in dst.iter_mut().zip(g).zip(x).zip(y) {
                *v = g * d(x, y);
            }
        });
        out
    }
}

/// `tanh(v) = 1 − 2/(e^{2v} + 1)`: one `exp` instead of libm's `tanh` (which goes through
/// `expm1` and costs about three times as much); saturates to ±1 without overflow trouble.
/// Absolute error below 1e-7 in `f32`, which GELU multiplies by `x/2`.
fn tanh_via_exp<T: Float>(v: T) -> T {
    let two = T::one() + T::one();
    T::one() - two / ((two * v).exp() + T::one())
}

fn sigmoid<T: Float>(v: T) -> T {
    // Two branches so that exp never overflows.
    if v >= T::zero() {
        T::one() / (T::one() + (-v).exp())
    } else {
        let e = v.exp();
        e / (T::one() + e)
    }
}

/// Dense copy of a tensor's data as `Vec<T>`.
fn dense<T: Float>(t: &Tensor, op: &'static str) -> Result<Vec<T>> {
    t.with_cpu::<T, _>(op, |d, l| crate::cpu::gather(d, l))
}

impl Tensor {
    fn unary(&self, op: Unary) -> Result<Tensor> {
        let out = with_dtype!(self.dtype(), T => {
            let y = self.with_cpu::<T, _>(op.name(), |d, l| match l.contiguous_range() {
                Some(r) => op.forward(&d[r]),
                None => op.forward(&crate::cpu::gather(d, l)),
            })?;
            Tensor::from_vec(y, self.shape())?
        });
        let (x, y) = (self.detach(), out.detach());
        Ok(out.record(&[self], op.name(), move |g| {
            with_dtype!(g.dtype(), T => {
                let gx = op.backward::<T>(&dense(&x, op.name())?, &dense(&y, op.name())?, &dense(g, op.name())?);
                Ok(vec![Some(Tensor::from_vec(gx, x.shape())?)])
            })
        }))
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
