//! The training harness every task program stands on (`lm`, `classification`, `ssl`,
//! `asr`). A [`Task`] says what differs between them — the data, the model, the loss of a
//! freshly drawn batch, the evaluation, the state to save beside the weights, what to write
//! at the end — and [`run`] does the rest the same way for all: the shared flags
//! ([`TrainArgs`]), the optimizer and schedule, the progress bar, `metrics.jsonl`, atomic
//! checkpoints that resume bit-identically, `summary.json`, the standard plots, and
//! divergence as an outcome ([`Outcome::Diverged`]) rather than a crash.

mod checkpoint;
mod cli;
mod config;
mod inspect;
mod plots;
mod runner;
mod step;

pub use checkpoint::{load_run, LoadedRun};
pub use cli::{fail, parse_cli, recipes, run_cli, set_threads, ParsedCli};
pub use config::{
    above_zero, at_least_zero, check_memory, check_transformer, positive, product, OptimizerKind,
    Schedule, TrainArgs, TrainConfig, Variant, RESUME_FLAGS,
};
pub use plots::{write_comparison, write_plots};
pub use runner::{run, Outcome, RunOptions, RunSummary};
pub use step::{build_optimizer, optimize, StepOutcome, LARS_ETA};

use crate::Result;
use engine::Tensor;
use nn::{LinearLayer, ModuleExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// File name of the checkpoint inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the metrics log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the run's summary inside a run directory.
pub const SUMMARY_FILE: &str = "summary.json";

/// What the trainer reads off a model for its diagnostics.
pub trait Inspect: ModuleExt {
    /// Turn recording of attention entropy on (for the next forward) or off.
    fn set_record_entropy(&self, on: bool);

    /// Per attention layer, in order: the mean attention entropy per head of the last
    /// recorded forward (nats) and its Theorem 3.1 lower bound per head.
    fn attention_stats(&self) -> Result<Vec<(Vec<f64>, Vec<f64>)>>;

    /// Every linear layer with its full name (`blocks.0.attn.q`, …).
    fn linears(&self) -> Vec<(String, &LinearLayer)>;
}

/// The random streams of a run, all from the run's seed, saved in checkpoints.
#[derive(Debug, Clone)]
pub struct Rngs {
    /// Batch order and data augmentation.
    pub batch: ChaCha8Rng,
    /// Dropout masks.
    pub dropout: ChaCha8Rng,
}

/// Stream `stream` of `seed`: 0 initializes models, 1 draws batches, 2 dropout, 3 samples
/// (lm's generated text).
pub fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// What a task is set up with.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// The shared settings of the run.
    pub train: &'a TrainConfig,
    /// The task state saved in the checkpoint being resumed (see [`Task::state`]).
    pub saved: Option<&'a Value>,
    /// May run a fetch script when the default data is missing.
    pub fetch: bool,
    /// May print what it loaded.
    pub verbose: bool,
}

/// What differs between task programs; [`run`] does the rest.
pub trait Task: Sized {
    /// The task's own settings (model size, data, …), saved in checkpoints.
    type Config: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned;
    /// The model trained.
    type Model: Inspect;

    /// The program's name (`lm`): default output directory `runs/<NAME>-<variant>`, and the
    /// command printed to resume a stopped run.
    const NAME: &'static str;
    /// What the loss measures, for the loss chart (`nats per character`).
    const LOSS_UNIT: &'static str;
    /// What [`Task::items_per_step`] counts (`tok`): throughput is shown as `<unit>/s`.
    const ITEM: &'static str;

    /// The shared settings of the program's recipe for `variant`.
    fn defaults(variant: Variant) -> TrainConfig;

    /// Check the task's own settings (and their interplay with the shared ones), naming the
    /// flag at fault, before anything is loaded or written.
    fn validate(cfg: &Self::Config, train: &TrainConfig) -> Result<()>;

    /// Load the data and build the model, its weights drawn from `init` (stream 0 of the
    /// seed). When resuming, `setup.saved` holds [`Task::state`] of the checkpoint and the
    /// task must refuse data it does not match.
    fn load(cfg: &Self::Config, setup: Setup, init: &mut ChaCha8Rng) -> Result<Self>;

    /// The model of a saved run, for inference, from its settings and saved task state
    /// (weights are drawn from `init`, then replaced by the checkpoint's).
    fn build_model(
        cfg: &Self::Config,
        train: &TrainConfig,
        state: &Value,
        init: &mut ChaCha8Rng,
    ) -> Result<Self::Model>;

    /// The model being trained.
    fn model(&self) -> &Self::Model;

    /// Task state saved beside the weights (for `lm`, the vocabulary).
    fn state(&self) -> Value;

    /// A one-line description of data and model for the log.
    fn describe(&self) -> String;

    /// Items (tokens, images, …) a training step consumes, for the throughput.
    fn items_per_step(&self) -> usize;

    /// The loss of a freshly drawn training batch, recording the graph (training mode).
    fn loss(&mut self, rngs: &mut Rngs) -> Result<Tensor>;

    /// Evaluation metrics, named `val_…` (the model is in eval mode, entropy recording off).
    fn evaluate(&mut self, rngs: &mut Rngs) -> Result<Vec<(&'static str, f64)>>;

    /// How an evaluation reads in the log line (`val 1.70 nats (2.45 bits/char)`).
    fn eval_line(metrics: &[(&'static str, f64)]) -> String {
        metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// Whether the σ and γ of the linear layer named `name` go on the σ/γ chart.
    fn plots_sigma_of(name: &str) -> bool;

    /// Work at the end of a completed run (for `lm`, the generated sample; for
    /// `classification`, the test set), with stream 3 of the seed. The metrics it returns
    /// (`test_accuracy`, …) go into `summary.json` beside the last evaluation's.
    fn finish(
        &mut self,
        out: &Path,
        rng: &mut ChaCha8Rng,
        verbose: bool,
    ) -> Result<Vec<(String, f64)>>;
}

/// Per-layer attention entropy and bound, σ and γ of every σReparam layer, as the record
/// fields `entropy`, `entropy_bound` (per layer, per head), `entropy_layer`,
/// `entropy_bound_layer` (per layer, mean over heads), `sigma` and `gamma` (by layer name).
pub fn diagnostics(model: &impl Inspect) -> Result<serde_json::Map<String, Value>> {
    let stats = model.attention_stats()?;
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (entropy, bound): (Vec<Vec<f64>>, Vec<Vec<f64>>) = stats.into_iter().unzip();
    let mut sigma = serde_json::Map::new();
    let mut gamma = serde_json::Map::new();
    for (name, l) in model.linears() {
        if let LinearLayer::SigmaReparam(s) = l {
            sigma.insert(name.clone(), s.sigma().into());
            gamma.insert(name, s.gamma().into());
        }
    }
    let mut out = serde_json::Map::new();
    out.insert(
        "entropy_layer".into(),
        entropy.iter().map(mean).collect::<Vec<_>>().into(),
    );
    out.insert(
        "entropy_bound_layer".into(),
        bound.iter().map(mean).collect::<Vec<_>>().into(),
    );
    out.insert("entropy".into(), entropy.into());
    out.insert("entropy_bound".into(), bound.into());
    out.insert("sigma".into(), sigma.into());
    out.insert("gamma".into(), gamma.into());
    Ok(out)
}
