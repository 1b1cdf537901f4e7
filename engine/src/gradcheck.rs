//! Finite-difference verification of gradients, for the engine's own ops and for users who
//! add theirs (PyTorch `torch.autograd.gradcheck`, same defaults).
//!
//! For `f: inputs → output`, a fixed random projection `R` (seeded) reduces the output to
//! the scalar `L = Σ f(x) ⊙ R`. The analytic gradient of `L` from [`Tensor::backward`] is
//! compared element by element with the central difference
//! `(L(x + ε e_j) − L(x − ε e_j)) / 2ε`, requiring `|a − n| ≤ atol + rtol·|n|`.

use crate::{no_grad, DType, Error, Result, Tensor};
use rand::SeedableRng;

/// Tolerances and step of [`gradcheck_with`]. The defaults are PyTorch's:
/// `eps = 1e-6`, `atol = 1e-5`, `rtol = 1e-3`.
#[derive(Debug, Clone, Copy)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (relative to the numeric value).
    pub rtol: f64,
    /// Seed of the output projection `R`.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
            seed: 0,
        }
    }
}

/// What a passing check compared: the largest absolute difference seen and how many
/// gradient entries were checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradcheckReport {
    pub max_abs_diff: f64,
    pub checked: usize,
}

/// [`gradcheck_with`] with the default options.
pub fn gradcheck<F>(f: F, inputs: &[Tensor]) -> Result<GradcheckReport>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    gradcheck_with(f, inputs, GradcheckOptions::default())
}

/// Check the gradients of `f` with respect to every input by central differences in f64.
///
/// `inputs` must be `f64`; they are copied into fresh leaves that require grad, so the
/// caller's tensors are untouched. `f` must be deterministic.
///
/// Errors with [`Error::GradientMismatch`] naming the input, the flat element index and
/// both values at the first failing entry, with [`Error::InvalidArgument`] for non-`f64`
/// inputs, and with whatever `f` returns.
pub fn gradcheck_with<F>(f: F, inputs: &[Tensor], opts: GradcheckOptions) -> Result<GradcheckReport>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let mut values = Vec::with_capacity(inputs.len());
    for (i, t) in inputs.iter().enumerate() {
        if t.dtype() != DType::F64 {
            return Err(Error::invalid(
                "gradcheck",
                format!("input {i} is {:?}; gradcheck needs f64", t.dtype()),
            ));
        }
        values.push(t.to_vec::<f64>()?);
    }
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let leaves = |vals: &[Vec<f64>], grad: bool| -> Result<Vec<Tensor>> {
        vals.iter()
            .zip(&shapes)
            .map(|(v, s)| Tensor::from_vec(v.clone(), s)?.requires_grad_(grad))
            .collect()
    };

    // Analytic gradient of L = Σ f(x) ⊙ R.
    let xs = leaves(&values, true)?;
    let out = f(&xs)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let r = Tensor::rand(out.shape(), -1.0, 1.0, DType::F64, &mut rng);
    let r_vals = r.to_vec::<f64>()?;
    let loss = out.to_dtype(DType::F64)?.mul(&r)?.sum_all()?;
    if loss.requires_grad() {
        loss.backward()?;
    }
    let analytic: Vec<Vec<f64>> = xs
        .iter()
        .map(|x| match x.grad() {
            Some(g) if g.shape() != x.shape() => Err(Error::Backward(format!(
                "gradient shape {:?} differs from input shape {:?}",
                g.shape(),
                x.shape()
            ))),
            Some(g) => g.to_vec::<f64>(),
            None => Ok(vec![0.0; x.numel()]),
        })
        .collect::<Result<_>>()?;

    // Numeric gradient, one coordinate at a time.
    let eval = |vals: &[Vec<f64>]| -> Result<f64> {
        no_grad(|| {
            let y = f(&leaves(vals, false)?)?.to_vec_f64()?;
            Ok(y.iter().zip(&r_vals).map(|(a, b)| a * b).sum())
        })
    };
    let mut report = GradcheckReport {
        max_abs_diff: 0.0,
        checked: 0,
    };
    let mut vals = values.clone();
    for i in 0..vals.len() {
        for j in 0..vals[i].len() {
            let x0 = vals[i][j];
            vals[i][j] = x0 + opts.eps;
            let plus = eval(&vals)?;
            vals[i][j] = x0 - opts.eps;
            let minus = eval(&vals)?;
            vals[i][j] = x0;
            let numeric = (plus - minus) / (2.0 * opts.eps);
            let a = analytic[i][j];
            let diff = (a - numeric).abs();
            // False when either side is NaN, so NaN always fails.
            let within = diff <= opts.atol + opts.rtol * numeric.abs();
            if !within {
                return Err(Error::GradientMismatch {
                    input: i,
                    index: j,
                    analytic: a,
                    numeric,
                });
            }
            report.max_abs_diff = report.max_abs_diff.max(diff);
            report.checked += 1;
        }
    }
    Ok(report)
}
