//! Optimizers (AdamW, SGD with momentum, LARS), clipping by global gradient norm, and the
//! linear warmup + cosine learning-rate schedule.
//!
//! Formulas follow PyTorch's `torch.optim.AdamW`, `torch.optim.SGD` and
//! `torch.nn.utils.clip_grad_norm_` (their documented update rules), and SimCLR's reference
//! LARS for [`Lars`]. Optimizer state is kept and updated in `f64` whatever the parameter
//! dtype. Parameters are updated in parallel, each on its own and in place through
//! [`Tensor::with_data_mut`] (which autograd does not record), and the global gradient norm
//! is summed in parameter order, so a step never depends on the thread count and a state
//! restored from [`Optimizer::state_dict`] continues bit-identically.

use crate::{Error, Result};
use engine::{DType, Float, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};

/// Parameters sharing hyper-parameters. The group's learning rate is the optimizer's
/// learning rate times `lr_scale`, so a schedule that sets the optimizer's rate moves every
/// group together.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// The tensors to update (leaves that require grad).
    pub params: Vec<Tensor>,
    /// Multiplier of the optimizer's learning rate for this group.
    pub lr_scale: f64,
    /// Decoupled weight decay (AdamW) or L2 penalty (SGD, LARS) of this group.
    pub weight_decay: f64,
    /// Whether [`Lars`] scales this group's learning rate by the trust ratio (default
    /// `true`; switch it off for biases, norms and γ, with a weight decay of 0, as SimCLR
    /// does). Ignored by the other optimizers.
    pub trust_ratio: bool,
}

impl ParamGroup {
    /// A group with `lr_scale` 1, the trust ratio on and the given weight decay.
    pub fn new(params: Vec<Tensor>, weight_decay: f64) -> Self {
        ParamGroup {
            params,
            lr_scale: 1.0,
            weight_decay,
            trust_ratio: true,
        }
    }

    /// The same group with its learning rate scaled by `lr_scale`.
    pub fn with_lr_scale(mut self, lr_scale: f64) -> Self {
        self.lr_scale = lr_scale;
        self
    }

    /// The same group with [`Lars`]'s trust ratio on or off.
    pub fn with_trust_ratio(mut self, on: bool) -> Self {
        self.trust_ratio = on;
        self
    }
}

/// A first-order optimizer over fixed parameter groups.
pub trait Optimizer {
    /// Update every parameter that has a gradient (parameters without one are skipped, as
    /// in PyTorch). Errors, changing no parameter, when a gradient's shape or dtype differs
    /// from its parameter's.
    fn step(&mut self) -> Result<()>;

    /// Clear the gradient of every parameter.
    fn zero_grad(&self);

    /// The base learning rate (groups scale it by their `lr_scale`).
    fn lr(&self) -> f64;

    /// Set the base learning rate (called by schedules before each step).
    fn set_lr(&mut self, lr: f64);

    /// The optimizer's state (moment buffers and step counts) as named `f64` tensors, keyed
    /// by the parameter's position across groups (`"3.exp_avg"`), for checkpoints.
    fn state_dict(&self) -> Result<BTreeMap<String, Tensor>>;

    /// Restore state saved by [`Optimizer::state_dict`] of an optimizer built over the same
    /// parameters. Errors (changing nothing) on a missing, extra or mis-shaped entry.
    fn load_state_dict(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;
}

/// Per-parameter buffers, stored flat in `f64`.
#[derive(Debug, Clone, Default)]
struct Slot {
    step: u64,
    /// AdamW: first moment; SGD: momentum buffer.
    a: Vec<f64>,
    /// AdamW: second moment; SGD: unused.
    b: Vec<f64>,
}

/// The gradient of `p`, or `None` without one. Errors when its shape or dtype differs from
/// the parameter's.
fn checked_grad(p: &Tensor) -> Result<Option<Tensor>> {
    let Some(g) = p.grad() else {
        return Ok(None);
    };
    if g.shape() != p.shape() || g.dtype() != p.dtype() {
        return Err(Error::Config(format!(
            "optimizer: gradient of shape {:?} ({:?}) for a parameter of shape {:?} ({:?})",
            g.shape(),
            g.dtype(),
            p.shape(),
            p.dtype()
        )));
    }
    Ok(Some(g))
}

/// An update rule of one parameter, computed in `f64` whatever the parameter dtype.
trait Rule: Sync {
    /// Update the parameter's values `w` in place from its gradient `g` (same length) and
    /// its `slot`, with the group's learning rate `lr` and the rest of its settings
    /// (`weight_decay`, `trust_ratio`) from `group`.
    fn apply<T: Float>(&self, lr: f64, group: &ParamGroup, slot: &mut Slot, w: &mut [T], g: &[T]);
}

/// [`Rule::apply`] on parameter `p` of dtype `T` with its gradient `g`, both borrowed in
/// place.
fn apply_rule<T: Float>(
    rule: &impl Rule,
    lr: f64,
    group: &ParamGroup,
    slot: &mut Slot,
    p: &Tensor,
    g: &Tensor,
) -> Result<()> {
    g.with_data(|g: &[T]| p.with_data_mut(|w: &mut [T]| rule.apply(lr, group, slot, w, g)))??;
    Ok(())
}

/// The parameter groups of an optimizer with one [`Slot`] per parameter (flattened across
/// groups, in order), and the loop every update rule shares.
#[derive(Debug, Clone)]
struct Groups {
    groups: Vec<ParamGroup>,
    slots: Vec<Slot>,
}

impl Groups {
    /// Errors when a tensor appears more than once (its updates would race).
    fn new(groups: Vec<ParamGroup>) -> Result<Self> {
        let mut seen = HashSet::new();
        if !groups
            .iter()
            .flat_map(|g| &g.params)
            .all(|p| seen.insert(p.id()))
        {
            return Err(Error::Config(
                "optimizer: a parameter appears more than once".into(),
            ));
        }
        Ok(Groups {
            slots: vec![Slot::default(); seen.len()],
            groups,
        })
    }

    fn params(&self) -> Vec<&Tensor> {
        self.groups.iter().flat_map(|g| &g.params).collect()
    }

    fn zero_grad(&self) {
        self.params().iter().for_each(|p| p.zero_grad());
    }

    /// Apply `rule` to every parameter with a gradient, in parallel, with its group's
    /// learning rate (`base_lr · lr_scale`) and settings and its slot. Every gradient is
    /// checked before any parameter changes.
    fn update(&mut self, base_lr: f64, rule: &impl Rule) -> Result<()> {
        let mut work = Vec::with_capacity(self.slots.len());
        let mut slots = self.slots.iter_mut();
        for group in &self.groups {
            let lr = base_lr * group.lr_scale;
            for p in &group.params {
                let slot = slots.next().expect("one slot per parameter");
                if let Some(g) = checked_grad(p)? {
                    work.push((p, g, lr, group, slot));
                }
            }
        }
        work.into_par_iter()
            .try_for_each(|(p, g, lr, group, slot)| match p.dtype() {
                DType::F32 => apply_rule::<f32>(rule, lr, group, slot, p, &g),
                DType::F64 => apply_rule::<f64>(rule, lr, group, slot, p, &g),
            })
    }
}

/// Save slots as `"{i}.step"`, `"{i}.{a_name}"`, `"{i}.{b_name}"` (empty buffers omitted).
fn slots_state(slots: &[Slot], a_name: &str, b_name: &str) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (i, s) in slots.iter().enumerate() {
        out.insert(
            format!("{i}.step"),
            Tensor::from_vec(vec![s.step as f64], &[1])?,
        );
        for (name, buf) in [(a_name, &s.a), (b_name, &s.b)] {
            if !buf.is_empty() {
                out.insert(
                    format!("{i}.{name}"),
                    Tensor::from_vec(buf.clone(), &[buf.len()])?,
                );
            }
        }
    }
    Ok(out)
}

/// Inverse of [`slots_state`] for parameters `params` (flattened across groups).
fn load_slots(
    params: &[&Tensor],
    state: &BTreeMap<String, Tensor>,
    a_name: &str,
    b_name: &str,
) -> Result<Vec<Slot>> {
    let mut used = 0;
    let mut slots = Vec::with_capacity(params.len());
    for (i, p) in params.iter().enumerate() {
        let key = format!("{i}.step");
        let step = state
            .get(&key)
            .ok_or_else(|| Error::MissingKey(key.clone()))?
            .item()?;
        used += 1;
        let mut buf = |name: &str| -> Result<Vec<f64>> {
            let key = format!("{i}.{name}");
            match state.get(&key) {
                None => Ok(Vec::new()),
                Some(t) if t.numel() == p.numel() => {
                    used += 1;
                    t.to_vec_f64().map_err(Error::from)
                }
                Some(t) => Err(Error::StateShape {
                    key,
                    expected: vec![p.numel()],
                    found: t.shape().to_vec(),
                }),
            }
        };
        let (a, b) = (buf(a_name)?, buf(b_name)?);
        slots.push(Slot {
            step: step as u64,
            a,
            b,
        });
    }
    if used != state.len() {
        let known: Vec<String> = (0..params.len())
            .flat_map(|i| {
                [
                    format!("{i}.step"),
                    format!("{i}.{a_name}"),
                    format!("{i}.{b_name}"),
                ]
            })
            .collect();
        let extra = state
            .keys()
            .filter(|k| !known.contains(k))
            .cloned()
            .collect();
        return Err(Error::UnexpectedKeys(extra));
    }
    Ok(slots)
}

/// Hyper-parameters of [`AdamW`]; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square
    /// (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability (default 1e-8).
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}

/// Adam with decoupled weight decay (Loshchilov & Hutter 2019), PyTorch's `AdamW`:
///
/// ```text
/// p ← p − lr·λ·p
/// m ← β₁ m + (1−β₁) g          v ← β₂ v + (1−β₂) g²
/// p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
/// ```
///
/// with `lr` the group's learning rate and λ its `weight_decay` (PyTorch's default is 0.01).
#[derive(Debug, Clone)]
pub struct AdamW {
    groups: Groups,
    config: AdamWConfig,
}

impl AdamW {
    /// An optimizer over `groups`. Errors on a non-finite or negative learning rate, betas
    /// outside `[0, 1)`, a negative `eps` or a tensor listed twice.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        let (b1, b2) = config.betas;
        let valid = config.lr.is_finite()
            && config.lr >= 0.0
            && (0.0..1.0).contains(&b1)
            && (0.0..1.0).contains(&b2)
            && config.eps >= 0.0;
        if !valid {
            return Err(Error::Config(format!("AdamW: invalid {config:?}")));
        }
        Ok(AdamW {
            groups: Groups::new(groups)?,
            config,
        })
    }
}

impl Rule for AdamWConfig {
    fn apply<T: Float>(&self, lr: f64, group: &ParamGroup, slot: &mut Slot, w: &mut [T], g: &[T]) {
        let (b1, b2) = self.betas;
        if slot.a.is_empty() {
            slot.a = vec![0.0; w.len()];
            slot.b = vec![0.0; w.len()];
        }
        slot.step += 1;
        let bc1 = 1.0 - b1.powi(slot.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(slot.step as i32)).sqrt();
        let step = AdamWStep {
            b1,
            b2,
            step_size: lr / bc1,
            bc2_sqrt,
            decay: 1.0 - lr * group.weight_decay,
            eps: self.eps,
        };
        let (m, v) = (&mut slot.a[..], &mut slot.b[..]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { adamw_avx2(&step, w, g, m, v) };
        }
        adamw(&step, w, g, m, v)
    }
}

/// The scalars of one AdamW update of one parameter.
struct AdamWStep {
    b1: f64,
    b2: f64,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    bc2_sqrt: f64,
    /// `1 − lr·weight_decay`.
    decay: f64,
    eps: f64,
}

/// The AdamW update of weights `w` with gradient `g` and moments `m`, `v` (all of one
/// length), in PyTorch's order of operations.
#[inline(always)]
fn adamw<T: Float>(s: &AdamWStep, w: &mut [T], g: &[T], m: &mut [f64], v: &mut [f64]) {
    for (((wi, gi), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
        let gi = gi.to_f64_lossless();
        *m = s.b1 * *m + (1.0 - s.b1) * gi;
        *v = s.b2 * *v + (1.0 - s.b2) * gi * gi;
        let decayed = wi.to_f64_lossless() * s.decay;
        *wi = T::from_f64_lossy(decayed - s.step_size * *m / (v.sqrt() / s.bc2_sqrt + s.eps));
    }
}

/// [`adamw`] compiled for AVX2, chosen at run time: its square roots and divisions then
/// run four `f64` lanes wide instead of baseline x86-64's two, with bit-identical results
/// (Rust neither contracts nor reassociates floating-point operations).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn adamw_avx2<T: Float>(s: &AdamWStep, w: &mut [T], g: &[T], m: &mut [f64], v: &mut [f64]) {
    adamw(s, w, g, m, v)
}

/// `Optimizer` for an optimizer type with fields `groups: Groups` and `config` (a [`Rule`]
/// whose `lr` field is the base learning rate), naming its two per-parameter buffers in
/// `state_dict`: every optimizer here differs only in its rule and buffer names.
macro_rules! impl_optimizer {
    ($ty:ty, $a:literal, $b:literal) => {
        impl Optimizer for $ty {
            fn step(&mut self) -> Result<()> {
                self.groups.update(self.config.lr, &self.config)
            }

            fn zero_grad(&self) {
                self.groups.zero_grad();
            }

            fn lr(&self) -> f64 {
                self.config.lr
            }

            fn set_lr(&mut self, lr: f64) {
                self.config.lr = lr;
            }

            fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
                slots_state(&self.groups.slots, $a, $b)
            }

            fn load_state_dict(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
                self.groups.slots = load_slots(&self.groups.params(), state, $a, $b)?;
                Ok(())
            }
        }
    };
}

impl_optimizer!(AdamW, "exp_avg", "exp_avg_sq");

/// Hyper-parameters of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// Dampening of the momentum (PyTorch's default 0).
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// Stochastic gradient descent with momentum, PyTorch's `SGD`:
///
/// ```text
/// g ← g + λ p
/// b ← g (first step),  b ← μ b + (1−dampening) g (later steps)
/// g ← g + μ b (Nesterov)  or  g ← b
/// p ← p − lr g
/// ```
#[derive(Debug, Clone)]
pub struct Sgd {
    groups: Groups,
    config: SgdConfig,
}

impl Sgd {
    /// An optimizer over `groups`. Errors on a negative or non-finite learning rate or
    /// momentum, Nesterov without momentum or with dampening, or a tensor listed twice.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        let valid = config.lr.is_finite()
            && config.lr >= 0.0
            && config.momentum.is_finite()
            && config.momentum >= 0.0
            && (!config.nesterov || (config.momentum > 0.0 && config.dampening == 0.0));
        if !valid {
            return Err(Error::Config(format!("SGD: invalid {config:?}")));
        }
        Ok(Sgd {
            groups: Groups::new(groups)?,
            config,
        })
    }
}

impl Rule for SgdConfig {
    fn apply<T: Float>(&self, lr: f64, group: &ParamGroup, slot: &mut Slot, w: &mut [T], g: &[T]) {
        let weight_decay = group.weight_decay;
        let SgdConfig {
            momentum,
            dampening,
            nesterov,
            ..
        } = *self;
        // The momentum buffer starts as the first gradient.
        let first = slot.a.is_empty();
        if momentum != 0.0 && first {
            slot.a = vec![0.0; w.len()];
        }
        slot.step += 1;
        for (i, (wi, gi)) in w.iter_mut().zip(g).enumerate() {
            let wf = wi.to_f64_lossless();
            let mut gf = gi.to_f64_lossless();
            if weight_decay != 0.0 {
                gf += weight_decay * wf;
            }
            if momentum != 0.0 {
                let b = &mut slot.a[i];
                *b = if first {
                    gf
                } else {
                    momentum * *b + (1.0 - dampening) * gf
                };
                gf = if nesterov { gf + momentum * *b } else { *b };
            }
            *wi = T::from_f64_lossy(wf - lr * gf);
        }
    }
}

impl_optimizer!(Sgd, "momentum_buffer", "unused");

/// Hyper-parameters of [`Lars`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LarsConfig {
    /// Learning rate (the base rate; SimCLR scales it with the batch size).
    pub lr: f64,
    /// Momentum factor (SimCLR's default 0.9; 0 for none).
    pub momentum: f64,
    /// Trust coefficient η of the trust ratio (SimCLR's default 0.001).
    pub eta: f64,
}

/// Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
/// Convolutional Networks"), exactly as SimCLR's reference `LARSOptimizer`
/// (google-research/simclr, `classic_momentum=True`, no Nesterov) computes it, per
/// parameter `w` with gradient `g`, group weight decay λ and learning rate `lr`:
///
/// ```text
/// g ← g + λ w
/// trust = η ‖w‖ / ‖g‖   (1 when ‖w‖ = 0 or ‖g‖ = 0, or when the group's trust_ratio is off)
/// b ← μ b + (lr · trust) g          (b starts at 0)
/// w ← w − b
/// ```
///
/// The learning rate is inside the momentum buffer (unlike `timm`'s `Lars`, which scales
/// `g` by the trust ratio, runs PyTorch's SGD momentum and multiplies by `lr` after): when
/// a schedule changes `lr`, the buffer keeps the earlier steps at their old rates. The
/// norms are taken in `f64` in a fixed order ([`engine::dot_f64`]). Parameters that SimCLR
/// excludes from adaptation and decay (biases, norms; here also σReparam's γ) belong in a
/// group with [`ParamGroup::with_trust_ratio`]`(false)` and weight decay 0: plain SGD with
/// momentum there.
#[derive(Debug, Clone)]
pub struct Lars {
    groups: Groups,
    config: LarsConfig,
}

impl Lars {
    /// An optimizer over `groups`. Errors on a negative or non-finite learning rate or
    /// momentum, a trust coefficient that is not finite and > 0, or a tensor listed twice.
    pub fn new(groups: Vec<ParamGroup>, config: LarsConfig) -> Result<Self> {
        let valid = config.lr.is_finite()
            && config.lr >= 0.0
            && config.momentum.is_finite()
            && config.momentum >= 0.0
            && config.eta.is_finite()
            && config.eta > 0.0;
        if !valid {
            return Err(Error::Config(format!("LARS: invalid {config:?}")));
        }
        Ok(Lars {
            groups: Groups::new(groups)?,
            config,
        })
    }
}

impl Rule for LarsConfig {
    fn apply<T: Float>(&self, lr: f64, group: &ParamGroup, slot: &mut Slot, w: &mut [T], g: &[T]) {
        let weight_decay = group.weight_decay;
        let g: Vec<f64> = w
            .iter()
            .zip(g)
            .map(|(wi, gi)| {
                let gf = gi.to_f64_lossless();
                if weight_decay != 0.0 {
                    gf + weight_decay * wi.to_f64_lossless()
                } else {
                    gf
                }
            })
            .collect();
        let (w_norm, g_norm) = (engine::dot_f64(w, w).sqrt(), engine::dot_f64(&g, &g).sqrt());
        let trust = if group.trust_ratio && w_norm > 0.0 && g_norm > 0.0 {
            self.eta * w_norm / g_norm
        } else {
            1.0
        };
        let local_lr = lr * trust;
        if slot.a.is_empty() {
            slot.a = vec![0.0; w.len()];
        }
        slot.step += 1;
        for ((wi, gi), b) in w.iter_mut().zip(g).zip(&mut slot.a) {
            *b = self.momentum * *b + local_lr * gi;
            *wi = T::from_f64_lossy(wi.to_f64_lossless() - *b);
        }
    }
}

impl_optimizer!(Lars, "momentum_buffer", "unused");

/// The global L2 norm of all gradients, `√(Σ_p ‖∂L/∂p‖²)` (parameters without a gradient
/// count as zero), accumulated in `f64`: each gradient's sum of squares in parallel, then
/// their total in parameter order. When it exceeds `max_norm`, every gradient is scaled in
/// place (in parallel) by `max_norm / (norm + 1e-6)` (PyTorch's `clip_grad_norm_`). A
/// non-finite norm is returned as is and nothing is scaled, so the caller can stop on it.
///
/// `max_norm` must be finite and > 0 (a negative bound would flip every gradient's sign and 0
/// would erase them): otherwise [`Error::Config`] is returned and no gradient is touched. To
/// train without clipping, do not call this function.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::Config(format!(
            "clip_grad_norm: max_norm must be finite and > 0, got {max_norm}"
        )));
    }
    let grads: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
    let sums = grads
        .par_iter()
        .map(|g| match g.dtype() {
            DType::F32 => g.with_data(|d: &[f32]| engine::dot_f64(d, d)),
            DType::F64 => g.with_data(|d: &[f64]| engine::dot_f64(d, d)),
        })
        .collect::<engine::Result<Vec<f64>>>()?;
    let norm = sums.iter().fold(0.0, |sq, s| sq + s).sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        grads.par_iter().try_for_each(|g| match g.dtype() {
            DType::F32 => g.with_data_mut(|d: &mut [f32]| scale_by(d, scale)),
            DType::F64 => g.with_data_mut(|d: &mut [f64]| scale_by(d, scale)),
        })?;
    }
    Ok(norm)
}

/// Multiply every element by `scale` in `f64`.
fn scale_by<T: Float>(data: &mut [T], scale: f64) {
    for x in data {
        *x = T::from_f64_lossy(x.to_f64_lossless() * scale);
    }
}

/// Linear warmup then cosine decay (as in GPT-style training):
///
/// ```text
/// lr(s) = base · (s+1)/warmup                                   for s < warmup
/// lr(s) = min + (base − min) · ½ (1 + cos(π (s − warmup)/(total − warmup)))   after
/// ```
///
/// for step `s` counted from 0; after `total` steps the rate stays at `min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of warmup.
    pub base_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Number of warmup steps (0 for none).
    pub warmup: usize,
    /// Total number of steps, warmup included.
    pub total: usize,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.min_lr
            + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::DType;

    fn leaf(v: &[f64]) -> Tensor {
        Tensor::from_f64s(v, &[v.len()], DType::F64)
            .unwrap()
            .requires_grad_(true)
            .unwrap()
    }

    /// Set `p.grad` to `g` by back-propagating `Σ p·g`.
    fn set_grad(p: &Tensor, g: &[f64]) {
        p.zero_grad();
        let gt = Tensor::from_f64s(g, &[g.len()], DType::F64).unwrap();
        p.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    /// The AVX2 copy of the AdamW loop (taken on CPUs that have it) must give the baseline
    /// loop's results bit for bit, for f32 and f64 parameters.
    #[test]
    fn adamw_avx2_matches_the_baseline_loop() {
        #[cfg(target_arch = "x86_64")]
        fn check<T: Float + std::fmt::Debug>() {
            let n = 1003;
            let s = AdamWStep {
                b1: 0.9,
                b2: 0.999,
                step_size: 1e-3 / (1.0 - 0.9f64.powi(3)),
                bc2_sqrt: (1.0 - 0.999f64.powi(3)).sqrt(),
                decay: 1.0 - 1e-3 * 0.1,
                eps: 1e-8,
            };
            let of = |f: &dyn Fn(usize) -> f64| -> Vec<T> {
                (0..n).map(|i| T::from_f64_lossy(f(i))).collect()
            };
            let g = of(&|i| ((i * 7919 % 1000) as f64 - 500.0) * 1e-3);
            let w0 = of(&|i| (i as f64).sin());
            let m0: Vec<f64> = (0..n).map(|i| (i as f64).cos() * 1e-2).collect();
            let v0: Vec<f64> = (0..n).map(|i| 1e-6 * (1 + i % 5) as f64).collect();
            let (mut w1, mut m1, mut v1) = (w0.clone(), m0.clone(), v0.clone());
            adamw(&s, &mut w1, &g, &mut m1, &mut v1);
            let (mut w2, mut m2, mut v2) = (w0.clone(), m0, v0);
            // SAFETY: the caller checked that the CPU has AVX2.
            unsafe { adamw_avx2(&s, &mut w2, &g, &mut m2, &mut v2) };
            assert_ne!(w1, w0);
            assert_eq!((w1, m1, v1), (w2, m2, v2));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            check::<f32>();
            check::<f64>();
        }
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        // lr 0.1, wd 0.01, betas (0.9, 0.999), eps 1e-8; p = 1, g = 0.5 then -0.2.
        let p = leaf(&[1.0]);
        let mut opt = AdamW::new(
            vec![ParamGroup::new(vec![p.clone()], 0.01)],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        set_grad(&p, &[0.5]);
        opt.step().unwrap();
        // Step 1: decay → 0.999; m̂ = 0.5, v̂ = 0.25 → update 0.1·0.5/(0.5+1e-8).
        let p1 = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8);
        close(&p.to_vec_f64().unwrap(), &[p1]);
        set_grad(&p, &[-0.2]);
        opt.step().unwrap();
        let m = 0.9 * 0.05 + 0.1 * -0.2;
        let v = 0.999 * 0.00025 + 0.001 * 0.04;
        let p2 =
            p1 * 0.999 - 0.1 / (1.0 - 0.81) * m / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        close(&p.to_vec_f64().unwrap(), &[p2]);
    }

    #[test]
    fn adamw_group_options_and_missing_grads() {
        let a = leaf(&[1.0, 2.0]);
        let b = leaf(&[3.0]);
        let c = leaf(&[4.0]);
        let mut opt = AdamW::new(
            vec![
                ParamGroup::new(vec![a.clone(), c.clone()], 0.1),
                ParamGroup::new(vec![b.clone()], 0.0).with_lr_scale(10.0),
            ],
            AdamWConfig {
                lr: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        set_grad(&a, &[1.0, -1.0]);
        set_grad(&b, &[2.0]);
        opt.step().unwrap();
        // First Adam step moves each coordinate by lr·sign(g) (up to eps).
        close(
            &a.to_vec_f64().unwrap(),
            &[1.0 * 0.999 - 0.01, 2.0 * 0.999 + 0.01],
        );
        close(&b.to_vec_f64().unwrap(), &[3.0 - 0.1]);
        close(&c.to_vec_f64().unwrap(), &[4.0]); // no gradient: untouched, no decay
    }

    #[test]
    fn adamw_state_round_trip_continues_identically() {
        let run = |split: bool| {
            let p = leaf(&[0.3, -0.7]);
            let mk = |p: &Tensor| {
                AdamW::new(
                    vec![ParamGroup::new(vec![p.clone()], 0.01)],
                    AdamWConfig::default(),
                )
                .unwrap()
            };
            let mut opt = mk(&p);
            for s in 0..6 {
                if split && s == 3 {
                    let state = opt.state_dict().unwrap();
                    opt = mk(&p);
                    opt.load_state_dict(&state).unwrap();
                }
                set_grad(&p, &[s as f64 - 2.5, 0.1 * s as f64]);
                opt.step().unwrap();
            }
            p.to_vec_f64().unwrap()
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn load_state_rejects_bad_entries() {
        let p = leaf(&[1.0, 2.0]);
        let mut opt = AdamW::new(
            vec![ParamGroup::new(vec![p.clone()], 0.0)],
            AdamWConfig::default(),
        )
        .unwrap();
        let mut state = BTreeMap::new();
        assert!(matches!(
            opt.load_state_dict(&state),
            Err(Error::MissingKey(_))
        ));
        state.insert(
            "0.step".into(),
            Tensor::from_vec(vec![1.0f64], &[1]).unwrap(),
        );
        state.insert(
            "0.exp_avg".into(),
            Tensor::from_vec(vec![1.0f64], &[1]).unwrap(),
        );
        assert!(matches!(
            opt.load_state_dict(&state),
            Err(Error::StateShape { .. })
        ));
        state.remove("0.exp_avg");
        state.insert(
            "9.step".into(),
            Tensor::from_vec(vec![1.0f64], &[1]).unwrap(),
        );
        assert!(matches!(
            opt.load_state_dict(&state),
            Err(Error::UnexpectedKeys(_))
        ));
    }

    #[test]
    fn optimizers_reject_a_parameter_listed_twice() {
        let p = leaf(&[1.0]);
        let groups = vec![
            ParamGroup::new(vec![p.clone()], 0.0),
            ParamGroup::new(vec![p.clone()], 0.1),
        ];
        assert!(matches!(
            AdamW::new(groups, AdamWConfig::default()),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn sgd_momentum_matches_hand_computed_steps() {
        // lr 0.1, momentum 0.9, wd 0.5: g₁ = 1 + 0.5·2 = 2, b = 2, p = 2 − 0.2 = 1.8;
        // g₂ = −1 + 0.9 = −0.1, b = 1.8 − 0.1 = 1.7, p = 1.8 − 0.17 = 1.63.
        let p = leaf(&[2.0]);
        let mut opt = Sgd::new(
            vec![ParamGroup::new(vec![p.clone()], 0.5)],
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: false,
            },
        )
        .unwrap();
        set_grad(&p, &[1.0]);
        opt.step().unwrap();
        close(&p.to_vec_f64().unwrap(), &[1.8]);
        set_grad(&p, &[-1.0]);
        opt.step().unwrap();
        close(&p.to_vec_f64().unwrap(), &[1.63]);
        assert!(Sgd::new(
            vec![],
            SgdConfig {
                lr: 0.1,
                momentum: 0.0,
                dampening: 0.0,
                nesterov: true
            }
        )
        .is_err());
    }

    /// Two LARS steps by hand (lr 0.1, μ 0.9, η 0.25, λ 0.5), gradients chosen so that the
    /// decayed gradient is parallel to `w` in step 1; a second group without the trust
    /// ratio or decay gets SGD with the buffer `b ← μ b + lr g`.
    #[test]
    fn lars_matches_hand_computed_steps() {
        let (p, q) = (leaf(&[3.0, 4.0]), leaf(&[1.0]));
        let mut opt = Lars::new(
            vec![
                ParamGroup::new(vec![p.clone()], 0.5),
                ParamGroup::new(vec![q.clone()], 0.0).with_trust_ratio(false),
            ],
            LarsConfig {
                lr: 0.1,
                momentum: 0.9,
                eta: 0.25,
            },
        )
        .unwrap();
        // g + λw = [4.5, 6] + [1.5, 2] = [6, 8]: trust 0.25·5/10 = 0.125, local lr 0.0125,
        // b = [0.075, 0.1], w = [2.925, 3.9] (‖w‖ = 4.875). q: b = 0.2, q = 0.8.
        set_grad(&p, &[4.5, 6.0]);
        set_grad(&q, &[2.0]);
        opt.step().unwrap();
        close(&p.to_vec_f64().unwrap(), &[2.925, 3.9]);
        close(&q.to_vec_f64().unwrap(), &[0.8]);
        // g + λw = [−1.4625, 0] + [1.4625, 1.95] = [0, 1.95]: trust 0.25·4.875/1.95 = 0.625,
        // local lr 0.0625, b = 0.9·[0.075, 0.1] + [0, 0.121875] = [0.0675, 0.211875].
        // q: b = 0.18 − 0.1 = 0.08, q = 0.72.
        set_grad(&p, &[-1.4625, 0.0]);
        set_grad(&q, &[-1.0]);
        opt.step().unwrap();
        close(&p.to_vec_f64().unwrap(), &[2.8575, 3.688125]);
        close(&q.to_vec_f64().unwrap(), &[0.72]);
    }

    /// Zero weights (or a zero gradient) give trust ratio 1: the step is `lr · g`.
    #[test]
    fn lars_trust_ratio_is_one_at_zero_norms() {
        let (p, q) = (leaf(&[0.0, 0.0]), leaf(&[2.0, -1.0]));
        let config = LarsConfig {
            lr: 0.1,
            momentum: 0.9,
            eta: 0.001,
        };
        let mut opt = Lars::new(
            vec![ParamGroup::new(vec![p.clone(), q.clone()], 0.1)],
            config,
        )
        .unwrap();
        set_grad(&p, &[3.0, 4.0]);
        // g + λw = 0 for q: nothing moves.
        set_grad(&q, &[-0.2, 0.1]);
        opt.step().unwrap();
        close(&p.to_vec_f64().unwrap(), &[-0.3, -0.4]);
        close(&q.to_vec_f64().unwrap(), &[2.0, -1.0]);
        for bad in [
            LarsConfig { eta: 0.0, ..config },
            LarsConfig {
                lr: f64::NAN,
                ..config
            },
            LarsConfig {
                momentum: -0.5,
                ..config
            },
        ] {
            let err = Lars::new(vec![], bad).unwrap_err().to_string();
            assert!(err.starts_with("LARS: invalid"), "{err}");
        }
    }

    #[test]
    fn lars_state_round_trip_continues_identically() {
        let run = |split: bool| {
            let p = Tensor::from_f64s(&[0.3, -0.7, 0.2], &[3], DType::F32)
                .unwrap()
                .requires_grad_(true)
                .unwrap();
            let mk = |p: &Tensor| {
                let config = LarsConfig {
                    lr: 0.5,
                    momentum: 0.9,
                    eta: 0.02,
                };
                Lars::new(vec![ParamGroup::new(vec![p.clone()], 0.01)], config).unwrap()
            };
            let mut opt = mk(&p);
            for s in 0..6 {
                if split && s == 3 {
                    let state = opt.state_dict().unwrap();
                    assert_eq!(state["0.step"].item().unwrap(), 3.0);
                    opt = mk(&p);
                    opt.load_state_dict(&state).unwrap();
                }
                p.zero_grad();
                let g = Tensor::from_f64s(&[s as f64 - 2.5, 0.1 * s as f64, 1.0], &[3], DType::F32)
                    .unwrap();
                p.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                opt.step().unwrap();
            }
            p.to_vec::<f32>().unwrap()
        };
        let (a, b) = (run(false), run(true));
        assert_ne!(a, [0.3, -0.7, 0.2]);
        assert_eq!(a, b);
    }

    #[test]
    fn clip_scales_to_max_norm() {
        let a = leaf(&[0.0, 0.0]);
        let b = leaf(&[0.0]);
        set_grad(&a, &[3.0, 0.0]);
        set_grad(&b, &[4.0]);
        let params = vec![a.clone(), b.clone()];
        assert!((clip_grad_norm(&params, 10.0).unwrap() - 5.0).abs() < 1e-12);
        close(&a.grad().unwrap().to_vec_f64().unwrap(), &[3.0, 0.0]);
        assert!((clip_grad_norm(&params, 1.0).unwrap() - 5.0).abs() < 1e-12);
        let s = 1.0 / (5.0 + 1e-6);
        close(&a.grad().unwrap().to_vec_f64().unwrap(), &[3.0 * s, 0.0]);
        close(&b.grad().unwrap().to_vec_f64().unwrap(), &[4.0 * s]);
        set_grad(&b, &[f64::NAN]);
        assert!(clip_grad_norm(&params, 1.0).unwrap().is_nan());
    }

    #[test]
    fn clip_refuses_a_max_norm_that_is_not_positive_and_finite() {
        let a = leaf(&[0.0, 0.0]);
        set_grad(&a, &[3.0, 4.0]);
        let params = vec![a.clone()];
        for bad in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            let err = clip_grad_norm(&params, bad).unwrap_err().to_string();
            assert!(
                err.contains("max_norm must be finite and > 0"),
                "{bad}: {err}"
            );
            // The gradient is left untouched.
            close(&a.grad().unwrap().to_vec_f64().unwrap(), &[3.0, 4.0]);
        }
    }

    #[test]
    fn cosine_schedule_values() {
        let s = CosineSchedule {
            base_lr: 1.0,
            min_lr: 0.1,
            warmup: 4,
            total: 14,
        };
        close(&[s.lr(0), s.lr(3)], &[0.25, 1.0]);
        close(
            &[s.lr(4), s.lr(9), s.lr(14), s.lr(100)],
            &[1.0, 0.55, 0.1, 0.1],
        );
        let no_warmup = CosineSchedule { warmup: 0, ..s };
        close(&[no_warmup.lr(0)], &[1.0]);
    }
}
