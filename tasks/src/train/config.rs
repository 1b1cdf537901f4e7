//! The settings every task program shares: model variant, optimizer and schedule, run length
//! and logging intervals, as resolved values ([`TrainConfig`], saved in checkpoints) and as
//! command-line flags ([`TrainArgs`], flattened into each program's CLI).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which normalization and linear layers a task's transformer uses (the paper's variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Plain linears, LayerNorm before each residual branch (GPT-2, DeiT).
    PreLn,
    /// Plain linears, LayerNorm after each residual sum (original Transformer).
    PostLn,
    /// σReparam linears and no LayerNorm at all.
    SigmaReparam,
    /// σReparam linears with pre-LN.
    SigmaReparamPreLn,
    /// σReparam linears with post-LN.
    SigmaReparamPostLn,
}

impl Variant {
    /// LayerNorm placement and whether linears are σReparam.
    pub fn layout(self) -> (nn::NormPlacement, bool) {
        use nn::NormPlacement::{None, Post, Pre};
        match self {
            Variant::PreLn => (Pre, false),
            Variant::PostLn => (Post, false),
            Variant::SigmaReparam => (None, true),
            Variant::SigmaReparamPreLn => (Pre, true),
            Variant::SigmaReparamPostLn => (Post, true),
        }
    }

    /// The flag value (`pre-ln`, `sigma-reparam`, …).
    pub fn name(self) -> &'static str {
        match self {
            Variant::PreLn => "pre-ln",
            Variant::PostLn => "post-ln",
            Variant::SigmaReparam => "sigma-reparam",
            Variant::SigmaReparamPreLn => "sigma-reparam-pre-ln",
            Variant::SigmaReparamPostLn => "sigma-reparam-post-ln",
        }
    }
}

/// The optimizer of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter 2019), decoupled weight decay on matrices.
    Adamw,
    /// SGD with (heavy-ball) momentum, L2 weight decay on matrices.
    Sgd,
    /// LARS (You et al. 2017): SGD with momentum and a per-matrix trust ratio.
    Lars,
}

impl OptimizerKind {
    /// The flag value (`adamw`, `sgd`, `lars`).
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Lars => "lars",
        }
    }
}

/// The learning-rate schedule after the linear warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine decay from `lr` to `lr · min_lr_ratio` at the last step.
    Cosine,
    /// `lr` until the end.
    Constant,
}

/// The shared settings of a run, resolved (no defaults left); saved in checkpoints. Each
/// task program supplies its defaults per variant (its recipe) through
/// [`crate::train::Task::defaults`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model variant (normalization and linear layers).
    pub variant: Variant,
    /// σReparam γ₀ = 1 instead of σ(W₀).
    pub gamma_one: bool,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Decay after warmup.
    pub schedule: Schedule,
    /// Final learning rate of the cosine schedule as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// Momentum of SGD and LARS (AdamW keeps its β₁ = 0.9).
    pub momentum: f64,
    /// Weight decay of matrices (biases, norms and γ get none).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: f64,
    /// Learning-rate multiplier of σReparam's γ parameters.
    pub gamma_lr_scale: f64,
    /// Training steps.
    pub steps: usize,
    /// Seed of initialization, batches, dropout and sampling.
    pub seed: u64,
    /// Steps between metrics records.
    pub log_every: usize,
    /// Steps between evaluations.
    pub eval_every: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// A training loss above this ends the run as diverged.
    pub max_loss: f64,
}

impl TrainConfig {
    /// The recipe-independent defaults: AdamW (lr 1e-3, cosine decay to 0.1·lr, 100 warmup
    /// steps, weight decay 0.01), momentum 0.9 for SGD/LARS, clipping at 1.0, γ at the base
    /// learning rate, 1500 steps, seed 0, logs every 10 steps, evaluations every 100,
    /// checkpoints every 250, divergence above a loss of 50.
    pub fn new(variant: Variant) -> TrainConfig {
        TrainConfig {
            variant,
            gamma_one: false,
            optimizer: OptimizerKind::Adamw,
            lr: 1e-3,
            schedule: Schedule::Cosine,
            min_lr_ratio: 0.1,
            warmup: 100,
            momentum: 0.9,
            weight_decay: 0.01,
            grad_clip: 1.0,
            gamma_lr_scale: 1.0,
            steps: 1500,
            seed: 0,
            log_every: 10,
            eval_every: 100,
            checkpoint_every: 250,
            max_loss: 50.0,
        }
    }

    /// For [`Variant::SigmaReparam`], this recipe turned into the paper's simplified one (no
    /// LayerNorm, so no adaptive optimizer, warmup or weight decay): SGD with momentum at
    /// learning rate `lr`; any other variant's recipe unchanged.
    pub fn simplified_for_sigma_reparam(self, lr: f64) -> TrainConfig {
        match self.variant {
            Variant::SigmaReparam => TrainConfig {
                optimizer: OptimizerKind::Sgd,
                lr,
                weight_decay: 0.0,
                warmup: 0,
                ..self
            },
            _ => self,
        }
    }

    /// The learning-rate schedule of the run.
    pub fn lr_schedule(&self) -> nn::CosineSchedule {
        let min_lr = match self.schedule {
            Schedule::Cosine => self.lr * self.min_lr_ratio,
            Schedule::Constant => self.lr,
        };
        nn::CosineSchedule {
            base_lr: self.lr,
            min_lr,
            warmup: self.warmup,
            total: self.steps,
        }
    }

    /// Check every shared setting, naming the flag at fault: positive step counts and
    /// intervals, `--lr`, `--grad-clip` and `--max-loss` finite and > 0, `--weight-decay`,
    /// `--gamma-lr-scale` finite and ≥ 0 (with a finite product with `--lr`),
    /// `--min-lr-ratio` in [0, 1], `--momentum` in [0, 1).
    pub fn validate(&self) -> Result<()> {
        positive(&[
            ("--steps", self.steps),
            ("--log-every", self.log_every),
            ("--eval-every", self.eval_every),
            ("--checkpoint-every", self.checkpoint_every),
        ])?;
        above_zero(&[
            ("--lr", self.lr),
            ("--grad-clip", self.grad_clip),
            ("--max-loss", self.max_loss),
        ])?;
        at_least_zero(&[
            ("--weight-decay", self.weight_decay),
            ("--gamma-lr-scale", self.gamma_lr_scale),
            ("--min-lr-ratio", self.min_lr_ratio),
        ])?;
        if self.min_lr_ratio > 1.0 {
            return Err(Error::Config(format!(
                "--min-lr-ratio must be at most 1 (the final rate is a fraction of --lr), got {}",
                self.min_lr_ratio
            )));
        }
        if !(self.lr * self.gamma_lr_scale).is_finite() {
            return Err(Error::Config(format!(
                "--lr {} × --gamma-lr-scale {} is not finite",
                self.lr, self.gamma_lr_scale
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::Config(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        Ok(())
    }
}

/// Errors naming the first flag whose value is 0.
pub fn positive(flags: &[(&str, usize)]) -> Result<()> {
    match flags.iter().find(|(_, v)| *v == 0) {
        Some((flag, _)) => Err(Error::Config(format!("{flag} must be at least 1"))),
        None => Ok(()),
    }
}

/// The checks every transformer's flags share: `--dropout` in [0, 1) and `--n-heads`
/// dividing `--d-model` (both counts already checked positive).
pub fn check_transformer(d_model: usize, n_heads: usize, dropout: f64) -> Result<()> {
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::Config(format!(
            "--dropout must be in [0, 1), got {dropout}"
        )));
    }
    if !d_model.is_multiple_of(n_heads) {
        return Err(Error::Config(format!(
            "--n-heads {n_heads} must divide --d-model {d_model}"
        )));
    }
    Ok(())
}

/// Errors naming the first flag whose value is not finite and > 0.
pub fn above_zero(flags: &[(&str, f64)]) -> Result<()> {
    match flags.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
        Some((flag, v)) => Err(Error::Config(format!(
            "{flag} must be finite and > 0, got {v}"
        ))),
        None => Ok(()),
    }
}

/// Errors naming the first flag whose value is not finite and ≥ 0.
pub fn at_least_zero(flags: &[(&str, f64)]) -> Result<()> {
    match flags.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
        Some((flag, v)) => Err(Error::Config(format!(
            "{flag} must be finite and >= 0, got {v}"
        ))),
        None => Ok(()),
    }
}

/// The flags every task program takes (`#[command(flatten)]`). A flag left out takes the
/// value of the program's recipe for the chosen `--variant` (see each program's section of
/// the README).
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Model variant: LayerNorm placement and plain or σReparam linear layers.
    #[arg(long, value_enum, default_value = "pre-ln")]
    pub variant: Variant,
    /// Initialize σReparam's γ to 1 instead of σ(W₀).
    #[arg(long)]
    pub gamma_one: bool,
    /// Optimizer [default: the recipe's].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Peak learning rate [default: the recipe's].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate decay after warmup [default: cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Final learning rate of the cosine schedule, as a fraction of --lr [default: the
    /// recipe's].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Linear warmup steps [default: the recipe's].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Momentum of --optimizer sgd and lars, in [0, 1) [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay of weight matrices [default: the recipe's].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm to this (finite and > 0) [default: 1].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Learning-rate multiplier of σReparam's γ [default: 1].
    #[arg(long)]
    pub gamma_lr_scale: Option<f64>,
    /// Training steps [default: the program's].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of initialization, batch order, dropout, augmentation and sampling [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between metrics records; step 1 and the last step are always logged
    /// [default: the program's].
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Steps between evaluations; the last step always evaluates [default: the program's].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Steps between checkpoints [default: the program's].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// A training loss above this (or a non-finite loss or gradient) ends the run as
    /// diverged [default: 50].
    #[arg(long)]
    pub max_loss: Option<f64>,
    /// Output directory [default: runs/<program>-<variant>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in DIR with its saved configuration. Only --threads, --quiet,
    /// --stop-after and --no-fetch may be given with it. A run already at its last step is
    /// left as it is.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start afresh in an --out directory that already holds a run, replacing its files
    /// (without it, such a directory is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Stop after this many steps (with a checkpoint), as if interrupted; --resume continues.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Worker threads, 1 to 1024 [default, or 0: all cores]. Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Never run a fetch script; stop with the command to run instead.
    #[arg(long)]
    pub no_fetch: bool,
    /// Print nothing but errors (no progress bar); files are written as usual.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags that may accompany `--resume` (the run's own configuration is restored from its
/// checkpoint; these only change how this process runs).
pub const RESUME_FLAGS: [&str; 5] = ["resume", "threads", "quiet", "stop_after", "no_fetch"];

impl TrainArgs {
    /// `defaults` (the program's recipe for `--variant`) with every given flag applied.
    pub fn resolve(&self, defaults: TrainConfig) -> TrainConfig {
        TrainConfig {
            variant: self.variant,
            gamma_one: self.gamma_one || defaults.gamma_one,
            optimizer: self.optimizer.unwrap_or(defaults.optimizer),
            lr: self.lr.unwrap_or(defaults.lr),
            schedule: self.schedule.unwrap_or(defaults.schedule),
            min_lr_ratio: self.min_lr_ratio.unwrap_or(defaults.min_lr_ratio),
            warmup: self.warmup.unwrap_or(defaults.warmup),
            momentum: self.momentum.unwrap_or(defaults.momentum),
            weight_decay: self.weight_decay.unwrap_or(defaults.weight_decay),
            grad_clip: self.grad_clip.unwrap_or(defaults.grad_clip),
            gamma_lr_scale: self.gamma_lr_scale.unwrap_or(defaults.gamma_lr_scale),
            steps: self.steps.unwrap_or(defaults.steps),
            seed: self.seed.unwrap_or(defaults.seed),
            log_every: self.log_every.unwrap_or(defaults.log_every),
            eval_every: self.eval_every.unwrap_or(defaults.eval_every),
            checkpoint_every: self.checkpoint_every.unwrap_or(defaults.checkpoint_every),
            max_loss: self.max_loss.unwrap_or(defaults.max_loss),
        }
    }
}

/// `MemTotal` of `/proc/meminfo` in bytes, or `None` where it cannot be read.
fn mem_total_bytes() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u128 << 30) as f64)
}

/// The product of `factors` (a size in bytes, for [`check_memory`]), saturating instead of
/// overflowing.
pub fn product(factors: &[usize]) -> u128 {
    factors
        .iter()
        .fold(1u128, |acc, &x| acc.saturating_mul(x as u128))
}

/// Refuse a run that needs more than half of the machine's memory (`MemTotal`; no check
/// where it cannot be read): the error reads `<what(need)>, more than half of this
/// machine's <total> of memory; <remedy>`, with `need` in GiB.
pub fn check_memory(need: u128, what: impl FnOnce(&str) -> String, remedy: &str) -> Result<()> {
    match mem_total_bytes() {
        Some(total) if need > total / 2 => Err(Error::Config(format!(
            "{}, more than half of this machine's {} of memory; {remedy}",
            what(&gib(need)),
            gib(total)
        ))),
        _ => Ok(()),
    }
}
