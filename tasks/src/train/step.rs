//! The optimization step every task program runs, and the optimizer it runs with: one
//! place for both, used by the trainer, the `lm_step` example and the benchmarks.

use super::config::{OptimizerKind, TrainConfig};
use crate::Result;
use engine::Tensor;
use nn::{
    clip_grad_norm, AdamW, AdamWConfig, Lars, LarsConfig, ModuleExt, Optimizer, ParamGroup, Sgd,
    SgdConfig,
};

/// LARS's trust coefficient η (SimCLR's reference value).
pub const LARS_ETA: f64 = 1e-3;

/// The optimizer of `cfg` over `model`'s parameters in three groups: matrices (rank ≥ 2)
/// with `cfg.weight_decay`; vectors (biases, norms, 1-D parts) without decay; σReparam's γ
/// (names ending in `.gamma`) without decay and with `cfg.gamma_lr_scale` times the learning
/// rate. For LARS (trust coefficient [`LARS_ETA`]) only the matrices get the trust ratio
/// (the usual exclusion of biases and norms; You et al. 2017).
pub fn build_optimizer(cfg: &TrainConfig, model: &impl ModuleExt) -> Result<Box<dyn Optimizer>> {
    let (mut decay, mut no_decay, mut gamma) = (Vec::new(), Vec::new(), Vec::new());
    for (name, p) in model.named_parameters() {
        if name.ends_with(".gamma") {
            gamma.push(p);
        } else if p.rank() >= 2 {
            decay.push(p);
        } else {
            no_decay.push(p);
        }
    }
    let groups = vec![
        ParamGroup::new(decay, cfg.weight_decay),
        ParamGroup::new(no_decay, 0.0),
        ParamGroup::new(gamma, 0.0).with_lr_scale(cfg.gamma_lr_scale),
    ];
    Ok(match cfg.optimizer {
        OptimizerKind::Adamw => Box::new(AdamW::new(
            groups,
            AdamWConfig {
                lr: cfg.lr,
                ..Default::default()
            },
        )?),
        OptimizerKind::Sgd => Box::new(Sgd::new(
            groups,
            SgdConfig {
                lr: cfg.lr,
                momentum: cfg.momentum,
                dampening: 0.0,
                nesterov: false,
            },
        )?),
        OptimizerKind::Lars => {
            let groups = groups
                .into_iter()
                .enumerate()
                .map(|(i, g)| g.with_trust_ratio(i == 0))
                .collect();
            Box::new(Lars::new(
                groups,
                LarsConfig {
                    lr: cfg.lr,
                    momentum: cfg.momentum,
                    eta: LARS_ETA,
                },
            )?)
        }
    })
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The parameters were updated.
    Updated {
        /// The training loss before the update.
        loss: f64,
        /// The global gradient norm before clipping.
        grad_norm: f64,
    },
    /// Nothing was updated: the loss or the gradient norm is non-finite, or the loss is
    /// above the run's `max_loss`.
    Diverged {
        /// The training loss (may be NaN or infinite).
        loss: f64,
        /// The gradient norm, when the backward pass ran.
        grad_norm: Option<f64>,
        /// What went wrong, for people.
        reason: String,
    },
}

/// One optimization step on a freshly computed `loss`: backward, gradient clipping at
/// `grad_clip`, the optimizer's update and `zero_grad`. A non-finite loss, a loss above
/// `max_loss` or a non-finite gradient norm updates nothing and returns
/// [`StepOutcome::Diverged`], leaving any gradients in place for inspection.
pub fn optimize(
    loss: &Tensor,
    params: &[Tensor],
    opt: &mut dyn Optimizer,
    grad_clip: f64,
    max_loss: f64,
) -> Result<StepOutcome> {
    let loss_v = loss.item()?;
    if !loss_v.is_finite() || loss_v > max_loss {
        return Ok(StepOutcome::Diverged {
            loss: loss_v,
            grad_norm: None,
            reason: if loss_v.is_finite() {
                format!("loss {loss_v} is above --max-loss {max_loss}")
            } else {
                format!("loss is {loss_v}")
            },
        });
    }
    loss.backward()?;
    let grad_norm = clip_grad_norm(params, grad_clip)?;
    if !grad_norm.is_finite() {
        return Ok(StepOutcome::Diverged {
            loss: loss_v,
            grad_norm: Some(grad_norm),
            reason: format!("gradient norm is {grad_norm}"),
        });
    }
    opt.step()?;
    opt.zero_grad();
    Ok(StepOutcome::Updated {
        loss: loss_v,
        grad_norm,
    })
}
