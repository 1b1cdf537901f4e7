//! σReparam as one fused differentiable op (Zhai et al., "Stabilizing Transformer Training by
//! Preventing Attention Entropy Collapse", ICML 2023, arXiv 2303.06296, eq. (2)).
//!
//! A linear layer with weight `W ∈ ℝ^{out×in}` is reparametrized as
//!
//! ```text
//! Ŵ = (γ / σ(W)) · W,        y = x Ŵᵀ + b
//! ```
//!
//! with `γ` a learned scalar, `b` a bias that is NOT reparametrized, and `σ(W)` the spectral
//! norm estimated by power iteration whose vectors persist across steps in a
//! [`PowerIterState`]: `u ∈ ℝ^{in}` (right singular vector estimate), `v ∈ ℝ^{out}` (left).
//!
//! Training mode runs one power step per forward, with no gradient through `u` and `v`:
//!
//! ```text
//! v ← normalize(W u),   u ← normalize(Wᵀ v),   σ = vᵀ W u,   normalize(z) = z / max(‖z‖₂, 1e-12)
//! ```
//!
//! Eval mode never modifies the state: `σ = vᵀ W u` is computed from the stored vectors.
//! In both modes the gradient flows through `σ` into `W` (`∂σ/∂W = v uᵀ`).
//!
//! The op never forms `Ŵ`: the forward is one product `x Wᵀ` scaled inside the product
//! kernel, and the backward is analytic, with `G = ∂L/∂Ŵ = (∂L/∂y)ᵀ x` summed over all rows
//! and `s = γ / max(σ, ε)`:
//!
//! ```text
//! ∂L/∂γ = ⟨G, W⟩_F / max(σ, ε)
//! ∂L/∂W = s · (G − (∂L/∂γ) · v uᵀ)          (the v uᵀ term is absent while σ ≤ ε)
//! ∂L/∂x = s · (∂L/∂y) W
//! ∂L/∂b = Σ_rows ∂L/∂y
//! ```

use crate::cpu::{dot_f64, fill_rows, map_rows};
use crate::dtype::with_dtype;
use crate::ops::{check_linear, weight_dims, Activation, LinearShape};
use crate::{no_grad, DType, Error, Float, Result, Tensor};
use rand::SeedableRng;
use rayon::prelude::*;

const OP: &str = "sigma_reparam_linear";

/// Floor of the norm in `normalize(z) = z / max(‖z‖₂, NORM_EPS)` (PyTorch `F.normalize`).
pub const NORM_EPS: f64 = 1e-12;

/// Clamp of the spectral norm: the op scales by `γ / max(σ, SIGMA_EPS)`.
///
/// An all-zero weight has `σ = vᵀ W u = 0` whatever `u` and `v` are, and `W / σ` would be NaN
/// (PyTorch #20192). With the clamp, `Ŵ = γ·W/SIGMA_EPS = 0`, the output equals the bias
/// exactly and every gradient is finite (`∂L/∂W = (γ/SIGMA_EPS)·G`, `∂L/∂γ = 0`). Below the
/// clamp `max(σ, ε)` is constant, so no gradient flows through `σ` there. The value bounds
/// the gradient gain of a vanishing weight by `γ·10⁶` while staying far below the spectral
/// norm of any weight that carries signal.
pub const SIGMA_EPS: f64 = 1e-6;

/// How the learned scale `γ` of a σReparam layer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GammaInit {
    /// `γ₀ = σ(W₀)`, so that `Ŵ = W` at step 0 (the official vision code).
    #[default]
    Sigma,
    /// `γ₀ = 1` (the paper's appendix pseudocode and the speech code).
    One,
}

/// The persistent power-iteration state of one σReparam weight `W ∈ ℝ^{out×in}`: `u ∈ ℝ^{in}`
/// (right singular vector estimate), `v ∈ ℝ^{out}` (left) and the last training-mode `σ`
/// (shape `[1]`), all of `W`'s dtype.
///
/// These are not parameters: nothing differentiates through them. They are updated in place
/// (with [`Tensor::copy_`]) by training-mode forwards of [`sigma_reparam_linear`], so a module
/// can expose the tensors returned by [`u`](Self::u), [`v`](Self::v) and
/// [`sigma`](Self::sigma) as buffers that a checkpoint saves and restores.
#[derive(Debug)]
pub struct PowerIterState {
    u: Tensor,
    v: Tensor,
    sigma: Tensor,
}

/// The unit vectors `u`, `v` and `σ = vᵀ W u` that one forward uses.
struct Step {
    u: Tensor,
    v: Tensor,
    sigma: f64,
}

impl PowerIterState {
    /// Run power iteration on `w` (`[out, in]`) to convergence: from a fixed-seed random start,
    /// repeat the training-mode step until the right vector moves by at most `tol` in
    /// Euclidean norm (`‖u_k − u_{k−1}‖₂ ≤ tol`) or `max_iters` steps have run. `σ` converges
    /// quadratically faster than the vectors, so its relative error is about `tol²`.
    /// (The official code starts from an exact SVD; this reaches the same vectors up to sign
    /// when the top singular value is simple.)
    ///
    /// Errors when `w` is not 2-D, `tol` is negative or NaN, or `max_iters` is 0.
    pub fn init(w: &Tensor, tol: f64, max_iters: usize) -> Result<Self> {
        let (out, inp) = weight_dims(OP, w)?;
        if tol.is_nan() || tol < 0.0 || max_iters == 0 {
            return Err(Error::invalid(
                "PowerIterState::init",
                format!("needs tol >= 0 and max_iters >= 1, got tol {tol}, max_iters {max_iters}"),
            ));
        }
        no_grad(|| {
            let w = w.detach();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let start = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
                let z = Tensor::randn(&[n], 0.0, 1.0, w.dtype(), rng);
                normalize_or_keep(&z.to_vec_f64()?, &z)
            };
            let mut u = start(inp, &mut rng)?.0;
            let mut v = start(out, &mut rng)?.0;
            let mut sigma = 0.0;
            for _ in 0..max_iters {
                let step = power_step(&w, &u, &v)?;
                let moved = distance(&step.u, &u)?;
                (u, v, sigma) = (step.u, step.v, step.sigma);
                if moved <= tol {
                    break;
                }
            }
            let sigma = Tensor::full(&[1], sigma, w.dtype());
            Ok(PowerIterState { u, v, sigma })
        })
    }

    /// The right singular vector estimate `u`, shape `[in]`.
    pub fn u(&self) -> &Tensor {
        &self.u
    }

    /// The left singular vector estimate `v`, shape `[out]`.
    pub fn v(&self) -> &Tensor {
        &self.v
    }

    /// The `σ = vᵀ W u` of the last training-mode step (or of [`PowerIterState::init`]),
    /// shape `[1]`. Unclamped.
    pub fn sigma(&self) -> &Tensor {
        &self.sigma
    }

    /// Error unless the state fits a weight of shape `[out, in]` and dtype `dtype`.
    fn check_fits(&self, out: usize, inp: usize, dtype: DType) -> Result<()> {
        let shapes_ok = self.u.shape() == [inp] && self.v.shape() == [out];
        if !shapes_ok || self.sigma.numel() != 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "power-iteration state u {:?}, v {:?}, sigma {:?} does not fit a weight \
                     [{out}, {inp}] (expected u [{inp}], v [{out}], sigma [1])",
                    self.u.shape(),
                    self.v.shape(),
                    self.sigma.shape()
                ),
            ));
        }
        for t in [&self.u, &self.v, &self.sigma] {
            if t.dtype() != dtype {
                return Err(Error::DTypeMismatch {
                    op: OP,
                    lhs: dtype,
                    rhs: t.dtype(),
                });
            }
        }
        Ok(())
    }
}

/// `(z / max(‖z‖₂, NORM_EPS), ‖z‖₂)` as a vector shaped like `prev`; when `z` is exactly zero
/// (an all-zero weight) a copy of `prev` instead, so that the state never collapses to zero
/// and recovers once the weight becomes non-zero.
fn normalize_or_keep(z: &[f64], prev: &Tensor) -> Result<(Tensor, f64)> {
    let norm = dot_f64(z, z).sqrt();
    if norm == 0.0 {
        return Ok((prev.copy()?, 0.0));
    }
    let d = norm.max(NORM_EPS);
    let unit: Vec<f64> = z.iter().map(|a| a / d).collect();
    Ok((Tensor::from_f64s(&unit, prev.shape(), prev.dtype())?, norm))
}

/// Rows of `W` per partial sum of `Wᵀz` in [`weight_times`]. Fixed, so that the partial
/// sums, and with them the result, do not depend on the thread count.
const POWER_BLOCK_ROWS: usize = 64;

/// `W z` for `z ∈ ℝ^{in}` or, with `transpose`, `Wᵀ z` for `z ∈ ℝ^{out}`, accumulated in `f64`
/// in one pass over the weight's rows, in parallel: one dot product per row for `W z`;
/// per block of [`POWER_BLOCK_ROWS`] rows a partial `Wᵀz`, added in block order. (A
/// matrix-vector product through the matmul kernel would first pack all of `W`, several
/// times the cost of this pass.)
fn weight_times(w: &Tensor, z: &[f64], transpose: bool) -> Result<Vec<f64>> {
    let (out, inp) = weight_dims(OP, w)?;
    let w = w.contiguous()?;
    with_dtype!(w.dtype(), T => w.with_cpu::<T, _>(OP, |data, l| {
        let w = &data[l.contiguous_range().expect("contiguous")];
        if !transpose {
            return map_rows(out, inp, |r| dot_f64(&w[r * inp..(r + 1) * inp], z));
        }
        let block = |b: usize| {
            let rows = b * POWER_BLOCK_ROWS..((b + 1) * POWER_BLOCK_ROWS).min(out);
            let mut acc = vec![0.0; inp];
            for (row, &zi) in w[rows.start * inp..rows.end * inp]
                .chunks_exact(inp.max(1))
                .zip(&z[rows])
            {
                for (a, &wij) in acc.iter_mut().zip(row) {
                    *a += zi * wij.to_f64_lossless();
                }
            }
            acc
        };
        let parts = map_rows(out.div_ceil(POWER_BLOCK_ROWS), POWER_BLOCK_ROWS * inp, block);
        let mut total = vec![0.0; inp];
        for p in parts {
            total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        }
        total
    }))
}

/// One training-mode power step from `(u, v)` on `w` (no graph: callers run under no_grad).
fn power_step(w: &Tensor, u: &Tensor, v: &Tensor) -> Result<Step> {
    let (v, _) = normalize_or_keep(&weight_times(w, &u.to_vec_f64()?, false)?, v)?;
    let (u, norm) = normalize_or_keep(&weight_times(w, &v.to_vec_f64()?, true)?, u)?;
    // σ = vᵀ W u_new = ‖Wᵀv‖² / max(‖Wᵀv‖, NORM_EPS), without another product with W (when
    // Wᵀv = 0 the kept u also gives vᵀ W u = 0).
    let sigma = norm * norm / norm.max(NORM_EPS);
    Ok(Step { u, v, sigma })
}

/// `vᵀ W u` for the stored vectors.
fn bilinear(w: &Tensor, u: &Tensor, v: &Tensor) -> Result<f64> {
    Ok(dot_f64(
        &weight_times(w, &u.to_vec_f64()?, false)?,
        &v.to_vec_f64()?,
    ))
}

/// Euclidean distance of two vectors of equal length.
fn distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_vec_f64()?, b.to_vec_f64()?);
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt())
}

/// Frobenius inner product `⟨a, b⟩` of two dense tensors of equal shape, in `f64` over
/// fixed-size chunks combined in order (the result does not depend on the thread count).
fn frobenius<T: Float>(a: &Tensor, b: &Tensor) -> Result<f64> {
    const CHUNK: usize = 1 << 14;
    a.with_cpu::<T, _>(OP, |da, la| {
        b.with_cpu::<T, _>(OP, |db, lb| {
            let dense = "frobenius needs dense operands";
            let x = &da[la
                .contiguous_range()
                .ok_or_else(|| Error::invalid(OP, dense))?];
            let y = &db[lb
                .contiguous_range()
                .ok_or_else(|| Error::invalid(OP, dense))?];
            let parts: Vec<f64> = x
                .par_chunks(CHUNK)
                .zip(y.par_chunks(CHUNK))
                .map(|(p, q)| dot_f64(p, q))
                .collect();
            Ok(parts.into_iter().sum())
        })
    })??
}

/// Apply `f(row_index, row)` to every row (innermost dimension) of `t` in place. `t` must be
/// a dense tensor freshly computed by this module and not yet shared with anything.
fn rows_in_place<T: Float>(t: &Tensor, f: impl Fn(usize, &mut [T]) + Sync) -> Result<()> {
    let row_len = t.layout().inner().0;
    t.with_data_mut(|data: &mut [T]| fill_rows(data, row_len, f))
}

/// The σReparam linear map `y = (γ / max(σ, ε)) · (x Wᵀ) + b` as one differentiable op.
///
/// Shapes: `x` `[..., in]` (rank ≥ 1), `w` `[out, in]`, `gamma` `[]` or `[1]`, `bias` `[out]`;
/// `state` fits `w` (`u` `[in]`, `v` `[out]`). The output is `[..., out]`.
///
/// With `training`, one power step (see the module docs) runs first and is persisted into
/// `state` (in place); without, `σ = vᵀ W u` comes from the stored vectors and `state` is not
/// modified. Gradients flow to `x`, `w`, `gamma` and `bias`, never to the state; the graph
/// node keeps its own copy of `(u, v, σ)`, so several forwards before one backward (the GAN
/// pattern `D(real) − D(fake)`) each differentiate with their own vectors. `ε` is
/// [`SIGMA_EPS`]: an all-zero `w` gives `y = b` exactly with finite gradients.
///
/// Errors with [`Error::ShapeMismatch`] when the last dim of `x` differs from `in`, with
/// [`Error::InvalidArgument`] naming the shapes when `w` is not 2-D, `gamma` has more than one
/// element, `bias` is not `[out]` or `state` does not fit `w`, with
/// [`Error::InvalidArgument`] when a training-mode power step on `w` gives a non-finite σ
/// (a NaN or infinite weight; `state` is then left unchanged), and with
/// [`Error::DTypeMismatch`] / [`Error::DeviceMismatch`] when the tensors disagree.
pub fn sigma_reparam_linear(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    bias: Option<&Tensor>,
    state: &PowerIterState,
    training: bool,
) -> Result<Tensor> {
    sigma_reparam_linear_act(x, w, gamma, bias, state, training, Activation::Identity)
}

/// `act(y)` for the σReparam linear map `y` of [`sigma_reparam_linear`], the activation
/// applied inside the product kernel as in [`Tensor::linear_act`]: the same values and
/// gradients as `sigma_reparam_linear` followed by the activation's own op, bit for bit.
/// Shapes, state updates and errors as [`sigma_reparam_linear`].
pub fn sigma_reparam_linear_act(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    bias: Option<&Tensor>,
    state: &PowerIterState,
    training: bool,
    act: Activation,
) -> Result<Tensor> {
    let LinearShape {
        rows,
        inp,
        out,
        y_shape,
    } = check_linear(OP, x, w, bias)?;
    gamma.check_same(OP, w)?;
    if gamma.rank() > 1 || gamma.numel() != 1 {
        return Err(Error::invalid(
            OP,
            format!("gamma must have shape [] or [1], got {:?}", gamma.shape()),
        ));
    }
    state.check_fits(out, inp, w.dtype())?;

    let dtype = w.dtype();
    let needs = [
        x.requires_grad(),
        w.requires_grad(),
        gamma.requires_grad(),
        bias.is_some_and(|b| b.requires_grad()),
    ];
    let with_grad = crate::is_grad_enabled() && needs.contains(&true);
    let (y, node) = no_grad(|| -> Result<_> {
        let wd = w.detach();
        let step = if training {
            let step = power_step(&wd, &state.u, &state.v)?;
            // A non-finite weight would leave NaN vectors in the state for good (σ clamps to
            // ε, so later outputs would be finite garbage): refuse it, state untouched.
            if !step.sigma.is_finite() {
                return Err(Error::NonFinite {
                    op: OP,
                    msg: format!(
                        "the power step on the weight {:?} gave σ = {}: the weight has \
                         non-finite values (the power-iteration state is left unchanged)",
                        w.shape(),
                        step.sigma
                    ),
                });
            }
            state.u.copy_(&step.u)?;
            state.v.copy_(&step.v)?;
            state.sigma.copy_(&Tensor::full(&[1], step.sigma, dtype))?;
            step
        } else {
            Step {
                sigma: bilinear(&wd, &state.u, &state.v)?,
                u: state.u.copy()?,
                v: state.v.copy()?,
            }
        };
        let scale = gamma.item()? / step.sigma.max(SIGMA_EPS);
        let x2 = x.detach().reshape(&[rows, inp])?;
        let (z, dy) = x2.matmul_act(&wd.t()?, scale, bias, act, with_grad)?;
        let dy = dy.map(|d| d.reshape(&y_shape)).transpose()?;
        let node = Node {
            x2,
            w: wd,
            step,
            scale,
            x_shape: x.shape().to_vec(),
            gamma_shape: gamma.shape().to_vec(),
            needs,
            has_bias: bias.is_some(),
            dy,
        };
        Ok((z.reshape(&y_shape)?, node))
    })?;
    let mut inputs = vec![x, w, gamma];
    inputs.extend(bias);
    Ok(y.record(&inputs, OP, move |g| {
        Activation::chain(node.dy.as_ref(), g, |g| node.backward(g))
    }))
}

/// What the backward of one forward needs, including its own copy of `(u, v, σ)`.
struct Node {
    /// `x` as `[rows, in]`, detached.
    x2: Tensor,
    /// `W` detached.
    w: Tensor,
    /// The vectors and `σ` this forward used.
    step: Step,
    /// `s = γ / max(σ, ε)`.
    scale: f64,
    x_shape: Vec<usize>,
    gamma_shape: Vec<usize>,
    /// Whether `x`, `W`, `γ`, `b` require grad.
    needs: [bool; 4],
    has_bias: bool,
    /// The activation's derivative at the output, when there is an activation.
    dy: Option<Tensor>,
}

impl Node {
    /// Gradients for `(x, W, γ[, b])` from `g = ∂L/∂y` (runs under no_grad).
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let [need_x, need_w, need_gamma, need_b] = self.needs;
        let (rows, out) = (self.x2.shape()[0], self.w.shape()[0]);
        let g2 = g.reshape(&[rows, out])?;
        let dtype = self.w.dtype();
        // ∂L/∂x = s·(∂L/∂y) W
        let dx = if need_x {
            Some(
                g2.matmul_scaled(&self.w, self.scale, None)?
                    .reshape(&self.x_shape)?,
            )
        } else {
            None
        };
        let (mut dw, mut dgamma) = (None, None);
        if need_w || need_gamma {
            // G = (∂L/∂y)ᵀ x, summed over rows by the product.
            let gm = g2.t()?.matmul(&self.x2)?;
            let w = self.w.contiguous()?;
            let d_gamma =
                with_dtype!(dtype, T => frobenius::<T>(&gm, &w)?) / self.step.sigma.max(SIGMA_EPS);
            if need_w {
                // ∂L/∂W = s·(G − (∂L/∂γ)·v uᵀ), in place on G; below the clamp σ is not
                // differentiated.
                let c = if self.step.sigma > SIGMA_EPS {
                    d_gamma
                } else {
                    0.0
                };
                with_dtype!(dtype, T => {
                    let (s, c) = (T::from_f64_lossy(self.scale), T::from_f64_lossy(c));
                    let (u, v) = (self.step.u.to_vec::<T>()?, self.step.v.to_vec::<T>()?);
                    rows_in_place::<T>(&gm, |i, row| {
                        let cv = c * v[i];
                        for (g, &uj) in row.iter_mut().zip(&u) {
                            *g = s * (*g - cv * uj);
                        }
                    })?;
                });
                dw = Some(gm);
            }
            if need_gamma {
                dgamma = Some(Tensor::full(&self.gamma_shape, d_gamma, dtype));
            }
        }
        let mut grads = vec![dx, dw, dgamma];
        if self.has_bias {
            grads.push(if need_b {
                Some(g2.sum(&[0], false)?)
            } else {
                None
            });
        }
        Ok(grads)
    }
}
