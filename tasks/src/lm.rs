//! The `lm` program: a character-level transformer language model trained on real text,
//! with per-head attention entropy, its Theorem 3.1 lower bound, σ(W) and γ logged as it
//! trains, checkpoints that resume bit-identically, plots and a generated sample.

use crate::metrics::{read_records, MetricsLog};
use crate::plot::{line_chart, Series};
use crate::text::{eval_batches, load_text, random_batch, Batch, TextData, Vocab};
use crate::{Error, Result};
use engine::{no_grad, DType, Tensor};
use nn::{
    clip_grad_norm, AdamW, AdamWConfig, Checkpoint, CosineSchedule, Gpt, GptConfig, LinearLayer,
    ModuleExt, NormPlacement, Optimizer, ParamGroup,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The default corpus, created by `scripts/fetch-shakespeare.sh`.
pub const DEFAULT_DATA: &str = "data/shakespeare.txt";
/// File name of the checkpoint inside the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// File name of the metrics log inside the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The batch and model size flags shared by the `lm` binary and the `lm_step` example
/// (`#[command(flatten)]`); the defaults are the default model's.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ModelSize {
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Characters per sequence (the model's context length).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    /// Number of transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layers: usize,
    /// Attention heads per block (must divide --d-model).
    #[arg(long, default_value_t = 4)]
    pub n_heads: usize,
}

impl ModelSize {
    /// `cfg` with these sizes.
    pub fn apply(self, cfg: RunConfig) -> RunConfig {
        RunConfig {
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            ..cfg
        }
    }
}

/// Which normalization and linear layers the model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Plain linears, LayerNorm before each residual branch (GPT-2).
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
    pub fn layout(self) -> (NormPlacement, bool) {
        match self {
            Variant::PreLn => (NormPlacement::Pre, false),
            Variant::PostLn => (NormPlacement::Post, false),
            Variant::SigmaReparam => (NormPlacement::None, true),
            Variant::SigmaReparamPreLn => (NormPlacement::Pre, true),
            Variant::SigmaReparamPostLn => (NormPlacement::Post, true),
        }
    }

    /// The recipe used when a flag is not given: `(lr, warmup, gamma_lr_scale)`.
    /// σReparam without LayerNorm trains best with a larger learning rate and no warmup
    /// (see README: σReparam holds spectral norms, so it tolerates and needs larger steps).
    pub fn recipe(self) -> (f64, usize, f64) {
        match self {
            Variant::PreLn | Variant::PostLn => (1e-3, 100, 1.0),
            Variant::SigmaReparam => (1e-2, 0, 1.0),
            Variant::SigmaReparamPreLn | Variant::SigmaReparamPostLn => (3e-3, 100, 1.0),
        }
    }
}

/// Every setting of a run, resolved (no defaults left); saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Model variant (normalization and linear layers).
    pub variant: Variant,
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr` (cosine decay).
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// Learning-rate multiplier of σReparam's γ parameters.
    pub gamma_lr_scale: f64,
    /// σReparam γ₀ = 1 instead of σ(W₀).
    pub gamma_one: bool,
    /// AdamW decoupled weight decay of matrices (biases, norms and γ get none).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this.
    pub grad_clip: f64,
    /// Training steps.
    pub steps: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Characters per sequence (and the model's context).
    pub seq_len: usize,
    /// Residual-stream width.
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads per block.
    pub n_heads: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Standard deviation of the embeddings at initialization.
    pub emb_std: f64,
    /// Factor on each residual branch.
    pub residual_scale: f64,
    /// Seed of initialization, batches, dropout and sampling.
    pub seed: u64,
    /// UTF-8 text file.
    pub data: PathBuf,
    /// Fraction of the text (its end) held out for validation.
    pub val_fraction: f64,
    /// Steps between metrics records.
    pub log_every: usize,
    /// Steps between validation losses (a multiple of `log_every`).
    pub eval_every: usize,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Characters generated at the end.
    pub sample_chars: usize,
    /// Sampling temperature.
    pub temperature: f64,
}

impl RunConfig {
    /// The defaults of the `lm` command for `variant` (its recipe of learning rate, warmup
    /// and γ learning-rate scale; d_model 256, 4 layers, 4 heads, 1500 steps of 16 × 128)
    /// on the text at `data`.
    pub fn defaults(variant: Variant, data: PathBuf) -> RunConfig {
        let (lr, warmup, gamma_lr_scale) = variant.recipe();
        RunConfig {
            variant,
            lr,
            min_lr_ratio: 0.1,
            warmup,
            gamma_lr_scale,
            gamma_one: false,
            weight_decay: 0.01,
            grad_clip: 1.0,
            steps: 1500,
            batch_size: 16,
            seq_len: 128,
            d_model: 256,
            n_layers: 4,
            n_heads: 4,
            dropout: 0.0,
            emb_std: 1.0,
            residual_scale: 1.0,
            seed: 0,
            data,
            val_fraction: 0.1,
            log_every: 10,
            eval_every: 100,
            eval_batches: 10,
            checkpoint_every: 250,
            sample_chars: 600,
            temperature: 0.8,
        }
    }

    /// The model this run trains, for a vocabulary of `vocab_size` characters.
    pub fn gpt_config(&self, vocab_size: usize) -> GptConfig {
        let (norm, sigma_reparam) = self.variant.layout();
        GptConfig {
            vocab_size,
            block_size: self.seq_len,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            dropout: self.dropout,
            norm,
            sigma_reparam,
            gamma_one: self.gamma_one,
            emb_std: self.emb_std,
            residual_scale: self.residual_scale,
        }
    }

    /// AdamW over `model`'s parameters in `lm`'s three groups: matrices with
    /// `weight_decay`; vectors (biases, norms, embeddings' 1-D parts) without; σReparam's γ
    /// without decay and with `gamma_lr_scale` times the learning rate.
    pub fn optimizer(&self, model: &Gpt) -> Result<AdamW> {
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
        Ok(AdamW::new(
            vec![
                ParamGroup::new(decay, self.weight_decay),
                ParamGroup::new(no_decay, 0.0),
                ParamGroup::new(gamma, 0.0).with_lr_scale(self.gamma_lr_scale),
            ],
            AdamWConfig {
                lr: self.lr,
                ..Default::default()
            },
        )?)
    }

    /// Check every setting before anything is created, naming the `lm` flag at fault:
    /// positive sizes and intervals, `--lr`, `--grad-clip`, `--emb-std`, `--residual-scale`
    /// and `--temperature` finite and > 0, `--weight-decay` and `--gamma-lr-scale` finite and
    /// ≥ 0, `--dropout` in [0, 1), `--n-heads` dividing `--d-model`, and attention memory
    /// (see [`attention_bytes`]) within half of the machine's memory.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let positive = [
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--seq-len", self.seq_len),
            ("--d-model", self.d_model),
            ("--n-layers", self.n_layers),
            ("--n-heads", self.n_heads),
            ("--log-every", self.log_every),
            ("--eval-every", self.eval_every),
            ("--eval-batches", self.eval_batches),
            ("--checkpoint-every", self.checkpoint_every),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return bad(format!("{flag} must be at least 1"));
            }
        }
        let above_zero = [
            ("--lr", self.lr),
            ("--grad-clip", self.grad_clip),
            ("--emb-std", self.emb_std),
            ("--residual-scale", self.residual_scale),
            ("--temperature", self.temperature),
        ];
        for (flag, v) in above_zero {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{flag} must be finite and > 0, got {v}"));
            }
        }
        let at_least_zero = [
            ("--weight-decay", self.weight_decay),
            ("--gamma-lr-scale", self.gamma_lr_scale),
            ("min_lr_ratio", self.min_lr_ratio),
        ];
        for (flag, v) in at_least_zero {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{flag} must be finite and >= 0, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--dropout must be in [0, 1), got {}", self.dropout));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "--n-heads {} must divide --d-model {}",
                self.n_heads, self.d_model
            ));
        }
        if let Some(total) = mem_total_bytes() {
            let need = attention_bytes(self);
            if need > total / 2 {
                return bad(format!(
                    "--batch-size {} × --seq-len {} needs about {} for the attention matrices \
                     alone ({} layers × {} heads × {}² × 4 bytes per sequence), more than half \
                     of this machine's {} of memory; lower --seq-len or --batch-size",
                    self.batch_size,
                    self.seq_len,
                    gib(need),
                    self.n_layers,
                    self.n_heads,
                    self.seq_len,
                    gib(total)
                ));
            }
        }
        Ok(())
    }

    /// The same configuration training on `data`.
    pub fn with_data(mut self, data: &Path) -> RunConfig {
        self.data = data.to_path_buf();
        self
    }
}

/// Bytes of the attention probabilities a training step keeps for the backward pass:
/// `n_layers · batch · n_heads · seq_len² · 4` (f32), saturating instead of overflowing.
/// Activations of the other layers come on top; this term is the one that grows with the
/// square of the context.
pub fn attention_bytes(cfg: &RunConfig) -> u128 {
    [
        cfg.n_layers,
        cfg.batch_size,
        cfg.n_heads,
        cfg.seq_len,
        cfg.seq_len,
        4,
    ]
    .iter()
    .fold(1u128, |acc, &x| acc.saturating_mul(x as u128))
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

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps completed.
    pub steps: usize,
    /// Last validation loss (nats per character), if evaluated.
    pub val_loss: Option<f64>,
    /// Last training loss.
    pub train_loss: f64,
    /// Wall-clock seconds spent in this process.
    pub seconds: f64,
    /// Training characters per second in this process.
    pub tokens_per_sec: f64,
    /// The generated sample (empty when `sample_chars` is 0 or the run was stopped early).
    pub sample: String,
    /// `--resume` found the run already finished and did nothing.
    pub already_complete: bool,
}

/// How to run: a fresh configuration or a directory to resume, plus process options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where checkpoints, metrics, plots and the sample go.
    pub out: PathBuf,
    /// Resume from `out`'s checkpoint instead of starting fresh.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps, as if interrupted.
    pub stop_after: Option<usize>,
    /// Show a progress bar and print lines.
    pub verbose: bool,
    /// Draw plots at the end (the `lm` program always does, `--quiet` included).
    pub plots: bool,
    /// May run the fetch script when the default data file is missing.
    pub fetch: bool,
}

/// State saved beside the tensors of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    config: RunConfig,
    vocab: String,
    batch_rng_word_pos: String,
    dropout_rng_word_pos: String,
}

/// The training state of a run.
struct Trainer {
    cfg: RunConfig,
    data: TextData,
    model: Gpt,
    opt: AdamW,
    sched: CosineSchedule,
    params: Vec<(String, Tensor)>,
    batch_rng: ChaCha8Rng,
    dropout_rng: ChaCha8Rng,
    eval: Vec<Batch>,
}

fn seeded(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Make sure the data file exists: when it is the default corpus and `fetch` is allowed,
/// run the fetch script; otherwise stop with the command to run.
fn ensure_data(path: &Path, fetch: bool, verbose: bool) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let script = root.join("scripts/fetch-shakespeare.sh");
    let command = format!("bash {} {}", script.display(), path.display());
    let is_default = path == Path::new(DEFAULT_DATA) || path.ends_with(DEFAULT_DATA);
    if !(fetch && is_default && script.exists()) {
        let hint = if is_default {
            format!("fetch it with:\n    {command}")
        } else {
            format!("pass an existing UTF-8 text file with --data, or fetch Shakespeare with: {command}")
        };
        return Err(Error::DataMissing {
            path: path.to_path_buf(),
            hint,
        });
    }
    if verbose {
        eprintln!(
            "{} is missing; fetching it with {}",
            path.display(),
            script.display()
        );
    }
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(path)
        .status()
        .map_err(|source| Error::Io {
            path: script.clone(),
            source,
        })?;
    if !status.success() || !path.exists() {
        return Err(Error::DataMissing {
            path: path.to_path_buf(),
            hint: format!("the fetch script failed ({status}); run it by hand: {command}"),
        });
    }
    Ok(())
}

impl Trainer {
    fn new(cfg: RunConfig, vocab: Option<Vocab>, verbose: bool) -> Result<Trainer> {
        let text = load_text(
            &cfg.data,
            &format!(
                "pass an existing UTF-8 text file, or fetch Shakespeare with: bash scripts/fetch-shakespeare.sh {}",
                cfg.data.display()
            ),
        )?;
        let mut data = TextData::split(&text, cfg.val_fraction, cfg.seq_len + 2)?;
        if let Some(v) = vocab {
            // A resumed run keeps the vocabulary it was trained with.
            if v != data.vocab {
                return Err(Error::Data(format!(
                    "the vocabulary of {} differs from the checkpoint's; resume with the same data",
                    cfg.data.display()
                )));
            }
            data.vocab = v;
        }
        if verbose {
            eprintln!(
                "data: {} ({} training, {} validation characters, vocabulary {}{})",
                cfg.data.display(),
                data.train.len(),
                data.val.len(),
                data.vocab.len(),
                if data.val_unknown > 0 {
                    format!(
                        ", {} unseen validation characters dropped",
                        data.val_unknown
                    )
                } else {
                    String::new()
                }
            );
        }
        let model = Gpt::new(
            cfg.gpt_config(data.vocab.len()),
            DType::F32,
            &mut seeded(cfg.seed, 0),
        )?;
        let params = model.named_parameters();
        let opt = cfg.optimizer(&model)?;
        let sched = CosineSchedule {
            base_lr: cfg.lr,
            min_lr: cfg.lr * cfg.min_lr_ratio,
            warmup: cfg.warmup,
            total: cfg.steps,
        };
        let eval = eval_batches(&data.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len);
        Ok(Trainer {
            batch_rng: seeded(cfg.seed, 1),
            dropout_rng: seeded(cfg.seed, 2),
            cfg,
            data,
            model,
            opt,
            sched,
            params,
            eval,
        })
    }

    fn checkpoint(&self, step: usize) -> Result<Checkpoint> {
        let mut tensors = BTreeMap::new();
        for (k, t) in self.model.state_dict()? {
            tensors.insert(format!("model.{k}"), t);
        }
        for (k, t) in self.opt.state_dict()? {
            tensors.insert(format!("optim.{k}"), t);
        }
        let state = SavedState {
            config: self.cfg.clone(),
            vocab: self.data.vocab.chars().iter().collect(),
            batch_rng_word_pos: self.batch_rng.get_word_pos().to_string(),
            dropout_rng_word_pos: self.dropout_rng.get_word_pos().to_string(),
        };
        Ok(Checkpoint {
            step: step as u64,
            config: serde_json::to_string(&state).expect("state serializes"),
            tensors,
        })
    }

    fn restore(&mut self, ckpt: &Checkpoint, state: &SavedState) -> Result<()> {
        let split = |prefix: &str| -> BTreeMap<String, Tensor> {
            ckpt.tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
                .collect()
        };
        self.model.load_state_dict(&split("model."))?;
        self.opt.load_state_dict(&split("optim."))?;
        let pos = |s: &str| {
            s.parse::<u128>()
                .map_err(|e| Error::Data(format!("checkpoint RNG state {s:?}: {e}")))
        };
        self.batch_rng.set_word_pos(pos(&state.batch_rng_word_pos)?);
        self.dropout_rng
            .set_word_pos(pos(&state.dropout_rng_word_pos)?);
        Ok(())
    }

    /// Mean validation loss over the fixed evaluation batches (eval mode, no graph).
    fn validate(&mut self) -> Result<f64> {
        self.model.eval();
        self.model.set_record_entropy(false);
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let mut total = 0.0;
        for batch in &self.eval {
            let loss = no_grad(|| {
                self.model
                    .loss(&batch.inputs, &batch.targets, b, t, &mut self.dropout_rng)
            })?;
            total += loss.item()?;
        }
        self.model.train();
        Ok(total / self.eval.len().max(1) as f64)
    }

    /// The first parameter whose gradient holds a NaN or infinity.
    fn first_non_finite_grad(&self) -> Result<Option<String>> {
        for (name, p) in &self.params {
            if let Some(g) = p.grad() {
                if g.to_vec_f64()?.iter().any(|x| !x.is_finite()) {
                    return Ok(Some(name.clone()));
                }
            }
        }
        Ok(None)
    }

    /// Entropy, bound, σ and γ of the current model (after a recorded forward).
    fn diagnostics(&self) -> Result<Value> {
        let mut entropy = Vec::new();
        let mut bound = Vec::new();
        for b in self.model.blocks() {
            entropy.push(b.attention().entropy());
            bound.push(b.attention().entropy_bound()?.unwrap_or_default());
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let mut sigma = serde_json::Map::new();
        let mut gamma = serde_json::Map::new();
        for (name, l) in self.model.linears() {
            if let LinearLayer::SigmaReparam(s) = l {
                sigma.insert(name.clone(), json!(s.sigma()));
                gamma.insert(name, json!(s.gamma()));
            }
        }
        Ok(json!({
            "entropy_layer": entropy.iter().map(mean).collect::<Vec<_>>(),
            "entropy_bound_layer": bound.iter().map(mean).collect::<Vec<_>>(),
            "entropy": entropy,
            "entropy_bound": bound,
            "sigma": sigma,
            "gamma": gamma,
        }))
    }

    /// Sample `n` characters after `prompt` (eval mode, temperature-scaled softmax).
    fn sample(&self, prompt: &str, n: usize, rng: &mut impl Rng) -> Result<String> {
        self.model.eval();
        self.model.set_record_entropy(false);
        let (mut ids, _) = self.data.vocab.encode(prompt);
        if ids.is_empty() {
            ids.push(0);
        }
        let start = ids.len();
        let v = self.data.vocab.len();
        for _ in 0..n {
            let ctx = &ids[ids.len().saturating_sub(self.cfg.seq_len)..];
            let logits = no_grad(|| self.model.forward(ctx, 1, ctx.len(), rng))?;
            let all = logits.to_vec_f64()?;
            let last = &all[(ctx.len() - 1) * v..ctx.len() * v];
            let m = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = last
                .iter()
                .map(|x| ((x - m) / self.cfg.temperature).exp())
                .collect();
            let mut r = rng.gen::<f64>() * w.iter().sum::<f64>();
            let mut next = v - 1;
            for (i, wi) in w.iter().enumerate() {
                if r < *wi {
                    next = i;
                    break;
                }
                r -= wi;
            }
            ids.push(next);
        }
        self.model.train();
        Ok(self.data.vocab.decode(&ids[start..]))
    }
}

/// Train (or resume) a model per `cfg` and `opts`; see the crate README for the outputs.
///
/// Errors: missing or non-UTF-8 data (with the command that fetches it), an unwritable
/// output directory, a corrupt checkpoint on resume, and a non-finite loss or gradient
/// ([`Error::NonFinite`], naming the step and the first parameter whose gradient went
/// non-finite; the last good checkpoint is kept).
pub fn run(cfg: Option<RunConfig>, opts: &RunOptions) -> Result<RunSummary> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let ckpt_path = opts.out.join(CHECKPOINT_FILE);
    let metrics_path = opts.out.join(METRICS_FILE);
    if opts.stop_after == Some(0) {
        return Err(Error::Config("--stop-after must be at least 1".into()));
    }
    let (mut tr, start, mut log) = if opts.resume {
        // Nothing is created or rewritten before the checkpoint is known to be usable.
        if !ckpt_path.is_file() {
            return Err(Error::Config(format!(
                "--resume {}: there is no {} to resume; pass the --out directory of an earlier run",
                opts.out.display(),
                ckpt_path.display()
            )));
        }
        let ckpt = Checkpoint::load(&ckpt_path).map_err(nn::Error::from)?;
        let state: SavedState = serde_json::from_str(&ckpt.config).map_err(|e| {
            Error::Data(format!(
                "checkpoint {} has a bad config: {e}",
                ckpt_path.display()
            ))
        })?;
        let step = ckpt.step as usize;
        if step >= state.config.steps {
            return already_complete(step, opts);
        }
        if let Some(s) = opts.stop_after.filter(|&s| s <= step) {
            return Err(Error::Config(format!(
                "--stop-after {s} is not beyond the checkpoint in {}, which is at step {step}",
                opts.out.display()
            )));
        }
        if !metrics_path.is_file() {
            return Err(Error::Config(format!(
                "--resume {}: {} is missing, so the resumed run's metrics would be incomplete; \
                 put it back, or start a new run with --out",
                opts.out.display(),
                metrics_path.display()
            )));
        }
        let vocab = Vocab::from_chars(state.vocab.chars().collect());
        let mut tr = Trainer::new(state.config.clone(), Some(vocab), opts.verbose)?;
        tr.restore(&ckpt, &state)?;
        let log = MetricsLog::resume(&metrics_path, ckpt.step)?;
        if opts.verbose {
            eprintln!(
                "resuming {} at step {step} of {} with its saved configuration",
                opts.out.display(),
                state.config.steps
            );
        }
        (tr, step, log)
    } else {
        let cfg = cfg.ok_or_else(|| Error::Data("no configuration to start a run".into()))?;
        cfg.validate()?;
        ensure_data(&cfg.data, opts.fetch, opts.verbose)?;
        let tr = Trainer::new(cfg, None, opts.verbose)?;
        std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
        let log = MetricsLog::create(&metrics_path)?;
        (tr, 0, log)
    };
    let cfg = tr.cfg.clone();
    if opts.verbose {
        eprintln!(
            "model: {:?}, {} parameters, d_model {}, {} layers, {} heads; lr {} (warmup {}), {} steps of {}×{}",
            cfg.variant,
            tr.model.num_parameters(),
            cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
            cfg.lr,
            cfg.warmup,
            cfg.steps,
            cfg.batch_size,
            cfg.seq_len
        );
    }
    let end = opts.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    let bar = if opts.verbose {
        let bar = indicatif::ProgressBar::new(cfg.steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        bar.set_position(start as u64);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let (b, t) = (cfg.batch_size, cfg.seq_len);
    let mut last_loss = f64::NAN;
    let mut last_val = None;
    for step in start..end {
        let lr = tr.sched.lr(step);
        tr.opt.set_lr(lr);
        let done = step + 1;
        let log_now = done % cfg.log_every == 0 || step == 0 || done == cfg.steps;
        let eval_now = done % cfg.eval_every == 0 || done == cfg.steps;
        tr.model.set_record_entropy(log_now);
        let batch = random_batch(&tr.data.train, b, t, &mut tr.batch_rng);
        let loss = tr
            .model
            .loss(&batch.inputs, &batch.targets, b, t, &mut tr.dropout_rng)?;
        let loss_v = loss.item()?;
        if !loss_v.is_finite() {
            return Err(Error::NonFinite {
                step: done,
                what: format!("loss is {loss_v}"),
                checkpoint: ckpt_path.clone(),
            });
        }
        loss.backward()?;
        let grad_norm = clip_grad_norm(&tr.opt_params(), cfg.grad_clip)?;
        if !grad_norm.is_finite() {
            let first = tr.first_non_finite_grad()?.unwrap_or_else(|| "?".into());
            return Err(Error::NonFinite {
                step: done,
                what: format!("gradient norm is {grad_norm}; first non-finite gradient in {first}"),
                checkpoint: ckpt_path.clone(),
            });
        }
        let diag = if log_now {
            Some(tr.diagnostics()?)
        } else {
            None
        };
        tr.opt.step()?;
        tr.opt.zero_grad();
        last_loss = loss_v;
        if let Some(diag) = diag {
            let mut rec = json!({"step": done, "lr": lr, "loss": loss_v, "grad_norm": grad_norm});
            if eval_now {
                let v = tr.validate()?;
                last_val = Some(v);
                rec["val_loss"] = json!(v);
                rec["val_bpc"] = json!(v / std::f64::consts::LN_2);
                let line = format!(
                    "step {done:>6}  train {loss_v:.4}  val {v:.4} nats ({:.3} bits/char)  {:.0} tok/s",
                    v / std::f64::consts::LN_2,
                    ((done - start) * b * t) as f64 / t0.elapsed().as_secs_f64()
                );
                // A hidden bar (output not a terminal) drops println; keep the line.
                if opts.verbose && bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
            }
            if let (Value::Object(r), Value::Object(d)) = (&mut rec, diag) {
                r.extend(d);
            }
            log.append(&rec)?;
        }
        if done % cfg.checkpoint_every == 0 || done == end {
            tr.checkpoint(done)?
                .save(&ckpt_path)
                .map_err(nn::Error::from)?;
        }
        let tps = ((done - start) * b * t) as f64 / t0.elapsed().as_secs_f64();
        bar.set_message(format!("loss {loss_v:.4} | {tps:.0} tok/s"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let tokens_per_sec = ((end - start) * b * t) as f64 / seconds.max(1e-9);
    let mut sample = String::new();
    if end == cfg.steps {
        if cfg.sample_chars > 0 {
            sample = tr.sample("\n", cfg.sample_chars, &mut seeded(cfg.seed, 3))?;
            std::fs::write(opts.out.join("sample.txt"), &sample)
                .map_err(io(&opts.out.join("sample.txt")))?;
            if opts.verbose {
                println!(
                    "--- sample ({} characters) ---\n{sample}\n---",
                    cfg.sample_chars
                );
            }
        }
        if opts.plots {
            write_plots(&opts.out)?;
        }
    }
    if end < cfg.steps && opts.verbose {
        eprintln!(
            "stopped at step {end} of {}; continue with:\n    cargo run --release -p tasks --bin lm -- --resume {}",
            cfg.steps,
            opts.out.display()
        );
    }
    let summary = json!({
        "steps": end, "seconds": seconds, "tokens_per_sec": tokens_per_sec,
        "train_loss": last_loss, "val_loss": last_val,
        "threads": rayon::current_num_threads(),
    });
    std::fs::write(opts.out.join("summary.json"), summary.to_string())
        .map_err(io(&opts.out.join("summary.json")))?;
    if opts.verbose {
        eprintln!(
            "done: {end} steps in {seconds:.0} s ({tokens_per_sec:.0} tok/s), train loss {last_loss:.4}{}; outputs in {}",
            last_val.map_or(String::new(), |v| format!(", val loss {v:.4}")),
            opts.out.display()
        );
    }
    Ok(RunSummary {
        steps: end,
        val_loss: last_val,
        train_loss: last_loss,
        seconds,
        tokens_per_sec,
        sample,
        already_complete: false,
    })
}

/// The answer to `--resume` on a run whose checkpoint is at its last step: nothing is
/// trained or rewritten; the losses are read back from its metrics.
fn already_complete(step: usize, opts: &RunOptions) -> Result<RunSummary> {
    if opts.verbose {
        eprintln!(
            "{} is already complete ({step} of {step} steps); nothing to do (outputs left as they are)",
            opts.out.display()
        );
    }
    let recs = read_records(&opts.out.join(METRICS_FILE))?;
    let last = |key: &str| recs.iter().rev().find_map(|r| r[key].as_f64());
    Ok(RunSummary {
        steps: step,
        val_loss: last("val_loss"),
        train_loss: last("loss").unwrap_or(f64::NAN),
        seconds: 0.0,
        tokens_per_sec: 0.0,
        sample: std::fs::read_to_string(opts.out.join("sample.txt")).unwrap_or_default(),
        already_complete: true,
    })
}

impl Trainer {
    fn opt_params(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.clone()).collect()
    }
}

/// `loss.svg`, `entropy.svg` and, for variants with σReparam layers, `sigma_gamma.svg` from
/// the metrics of the run in `out`.
pub fn write_plots(out: &Path) -> Result<()> {
    let recs = read_records(&out.join(METRICS_FILE))?;
    let pts = |key: &str| -> Vec<(f64, f64)> {
        recs.iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .collect()
    };
    let series = |name: String, points, color, dashed| Series {
        name,
        points,
        color,
        dashed,
    };
    line_chart(
        &out.join("loss.svg"),
        "Loss (nats per character)",
        "step",
        "loss",
        &[
            series("train".into(), pts("loss"), 0, false),
            series("validation".into(), pts("val_loss"), 1, false),
        ],
    )?;
    let n_layers = recs
        .last()
        .and_then(|r| r["entropy_layer"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    let layer_pts = |key: &str, l: usize| -> Vec<(f64, f64)> {
        recs.iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[key][l].as_f64()?)))
            .collect()
    };
    let mut ent = Vec::new();
    for l in 0..n_layers {
        ent.push(series(
            format!("layer {l}"),
            layer_pts("entropy_layer", l),
            l,
            false,
        ));
        ent.push(series(
            format!("layer {l} bound"),
            layer_pts("entropy_bound_layer", l),
            l,
            true,
        ));
    }
    line_chart(
        &out.join("entropy.svg"),
        "Attention entropy per layer (solid) and Theorem 3.1 lower bound (dashed)",
        "step",
        "nats",
        &ent,
    )?;
    // Query and key projections per layer (they set the attention logits) and the head.
    let names: Vec<String> = recs
        .last()
        .and_then(|r| {
            r["sigma"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<String>>())
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|n: &String| n.ends_with("attn.q") || n.ends_with("attn.k") || n == "head")
        .collect();
    if names.is_empty() {
        // No σReparam layer: there is no σ or γ to draw.
        return Ok(());
    }
    let mut sg = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (key, dashed) in [("sigma", false), ("gamma", true)] {
            let p = recs
                .iter()
                .filter_map(|r| Some((r["step"].as_f64()?, r[key][name].as_f64()?)))
                .collect();
            sg.push(series(format!("{key} {name}"), p, i, dashed));
        }
    }
    line_chart(
        &out.join("sigma_gamma.svg"),
        "σReparam: σ(W) (solid) and γ (dashed) of the query/key projections and the head",
        "step",
        "value",
        &sg,
    )
}
