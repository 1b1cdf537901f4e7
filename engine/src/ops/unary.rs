//! Elementwise unary ops; each backward is one fused kernel `g ⊙ f'(x, y)`.

use crate::cpu::{dense, map};
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
                    half * v * (T::one() + tanh_fast(k * (v + a * v * v * v)))
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

    /// `g · f'(x)` where `y = f(x)`; all slices dense and of equal length. The match is
    /// outside the loop so each derivative is inlined into its own (vectorizable) kernel.
    fn backward<T: Float>(self, x: &[T], y: &[T], g: &[T]) -> Vec<T> {
        let c = |v: f64| T::from_f64_lossy(v);
        let one = T::one();
        match self {
            Unary::Exp => scale_grad(x, y, g, |_, y| y),
            Unary::Log => scale_grad(x, y, g, |x, _| one / x),
            Unary::Sqrt => scale_grad(x, y, g, |_, y| c(0.5) / y),
            Unary::Tanh => scale_grad(x, y, g, |_, y| one - y * y),
            Unary::Sigmoid => scale_grad(x, y, g, |_, y| y * (one - y)),
            // Convention at the kink: relu'(0) = 0 (as PyTorch).
            Unary::Relu => scale_grad(x, y, g, |x, _| if x > T::zero() { one } else { T::zero() }),
            Unary::GeluTanh => {
                let (k, a, half, three) = (c(SQRT_2_OVER_PI), c(0.044715), c(0.5), c(3.0));
                scale_grad(x, y, g, |x, _| {
                    let t = tanh_fast(k * (x + a * x * x * x));
                    half * (one + t) + half * x * (one - t * t) * k * (one + three * a * x * x)
                })
            }
            Unary::GeluErf => {
                let (r, half, r2pi) = (c(FRAC_1_SQRT_2), c(0.5), c(FRAC_1_SQRT_2PI));
                scale_grad(x, y, g, |x, _| {
                    let cdf = half * (one + (x * r).erf());
                    cdf + x * r2pi * (-(x * x) * half).exp()
                })
            }
            Unary::Powf(p) => {
                let (p, q) = (c(p), c(p - 1.0));
                scale_grad(x, y, g, |x, _| p * x.powf(q))
            }
        }
    }
}

/// `out[i] = g[i] · d(x[i], y[i])`, collected straight into the output (no zero fill).
/// Generic in `d`, so every derivative gets its own inlined loop.
fn scale_grad<T: Float>(x: &[T], y: &[T], g: &[T], d: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    crate::cpu::map3(x, y, g, |x, y, g| g * d(x, y))
}

/// `tanh(z) = 1 − 2/(e^{2z} + 1)` through [`Float::fast_exp`]: branch-free, so the GELU
/// loops vectorize instead of calling libm per element. Its error is absolute (about one
/// ulp of 1), which GELU absorbs (`t` only enters as `1 + t` and `1 − t²`); the public
/// [`Tensor::tanh`] keeps libm's `tanh` for full relative accuracy near 0.
#[inline(always)]
fn tanh_fast<T: Float>(z: T) -> T {
    let two = T::one() + T::one();
    T::one() - two / ((two * z).fast_exp() + T::one())
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

impl Tensor {
    fn unary(&self, op: Unary) -> Result<Tensor> {
        let out = with_dtype!(self.dtype(), T => {
            let y = self.with_cpu::<T, _>(op.name(), |d, l| op.forward(&dense(d, l)))?;
            Tensor::from_vec(y, self.shape())?
        });
        let (x, y) = (self.detach(), out.detach());
        Ok(out.record(&[self], op.name(), move |g| {
            with_dtype!(g.dtype(), T => {
                // Borrowed in place when contiguous (the usual case), gathered otherwise.
                let gx = x.with_cpu::<T, _>(op.name(), |xd, xl| {
                    y.with_cpu::<T, _>(op.name(), |yd, yl| {
                        g.with_cpu::<T, _>(op.name(), |gd, gl| {
                            op.backward(&dense(xd, xl), &dense(yd, yl), &dense(gd, gl))
                        })
                    })
                })???;
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
