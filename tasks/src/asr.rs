//! The `asr` task: character-level speech recognition with CTC (Graves et al. 2006) on the
//! shared harness ([`crate::train`]): log-mel features of WAV files ([`crate::audio`]), a
//! convolutional front-end and a transformer ([`nn::AsrTransformer`]), greedy decoding, and
//! character and word error rates per group of the test split at the end.

use crate::audio::{self, LogMel, SpecAugment, N_MELS};
use crate::fetch::Fetchable;
use crate::train::{
    check_memory, check_transformer, positive, product, seeded, Rngs, Setup, Task, TrainConfig,
    Variant,
};
use crate::{Error, Result};
use engine::{no_grad, DType, Tensor};
use nn::asr::greedy_decode;
use nn::{AsrConfig, AsrTransformer, ModuleExt};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The default data directory, created by `scripts/fetch-speech.sh`.
pub const DEFAULT_DATA: &str = "data/speech";

/// The speech corpus, built from Debian packages on first use.
const SPEECH: Fetchable = Fetchable {
    default: DEFAULT_DATA,
    script: "fetch-speech.sh",
    instead:
        "a directory holding manifest.tsv (columns path, split, group, text) and its WAV files",
};

/// The name of the transcript list inside a data directory.
pub const MANIFEST: &str = "manifest.tsv";

/// The output units after the CTC blank (id 0): space, apostrophe, `a`–`z` (ids 1–28).
pub const ALPHABET: &str = " 'abcdefghijklmnopqrstuvwxyz";

/// Output classes: the blank and [`ALPHABET`].
pub const N_CLASSES: usize = 29;

/// Utterances per forward pass when evaluating (no graph is kept).
const EVAL_BATCH: usize = 64;
/// Seed of the validation split: the same held-out utterances whatever `--seed`.
const SPLIT_SEED: u64 = 0;
/// Decoded test utterances printed per group at the end.
const EXAMPLES: usize = 3;

/// A transcript in the output units: lower case; `’` as `'`; whitespace, `-` and `_` as
/// one space; every other character dropped; no space at either end.
pub fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            '’' => '\'',
            c if c.is_whitespace() || c == '-' || c == '_' => ' ',
            c => c,
        };
        if c == ' ' {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else if ALPHABET.contains(c) {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// The label ids (1–28) of a normalized transcript; characters outside [`ALPHABET`] are
/// skipped.
pub fn encode(text: &str) -> Vec<usize> {
    text.chars()
        .filter_map(|c| ALPHABET.find(c).map(|i| i + 1))
        .collect()
}

/// The text of label ids (the blank and unknown ids are skipped).
pub fn decode(ids: &[usize]) -> String {
    ids.iter()
        .filter_map(|&i| {
            ALPHABET
                .as_bytes()
                .get(i.wrapping_sub(1))
                .map(|&b| b as char)
        })
        .collect()
}

/// Edit distances and reference lengths summed over utterances: the character error rate
/// is `char_edits / chars`, the word error rate `word_edits / words` (Levenshtein
/// distance, from `strsim`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorRates {
    /// Character edits (substitutions, insertions, deletions).
    pub char_edits: usize,
    /// Reference characters.
    pub chars: usize,
    /// Word edits.
    pub word_edits: usize,
    /// Reference words.
    pub words: usize,
}

impl ErrorRates {
    /// Add one hypothesis against its reference.
    pub fn add(&mut self, hypothesis: &str, reference: &str) {
        let (h, r): (Vec<char>, Vec<char>) =
            (hypothesis.chars().collect(), reference.chars().collect());
        self.char_edits += strsim::generic_levenshtein(&h, &r);
        self.chars += r.len();
        let (h, r): (Vec<&str>, Vec<&str>) = (
            hypothesis.split_whitespace().collect(),
            reference.split_whitespace().collect(),
        );
        self.word_edits += strsim::generic_levenshtein(&h, &r);
        self.words += r.len();
    }

    /// Character error rate (NaN without references).
    pub fn cer(&self) -> f64 {
        self.char_edits as f64 / self.chars as f64
    }

    /// Word error rate (NaN without references).
    pub fn wer(&self) -> f64 {
        self.word_edits as f64 / self.words as f64
    }
}

/// One row of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The WAV file, relative to the data directory.
    pub path: PathBuf,
    /// `train` or `test`.
    pub split: String,
    /// The reporting group (`real`, `synthetic`, …).
    pub group: String,
    /// The transcript, normalized ([`normalize_text`]).
    pub text: String,
}

/// The rows of `dir/manifest.tsv`: a header of the tab-separated `path`, `split`, `group`, `text`, then one
/// tab-separated row per utterance, `split` being `train` or `test`. Errors name the file
/// and line: missing file, wrong header, a row without four fields, an unknown split, a
/// transcript with no letters, no training row.
pub fn read_manifest(dir: &Path) -> Result<Vec<Entry>> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let bad =
        |line: usize, what: String| Error::Data(format!("{} line {line}: {what}", path.display()));
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.split('\t').collect::<Vec<_>>() != ["path", "split", "group", "text"] {
        return Err(bad(
            1,
            format!("the header must be `path<TAB>split<TAB>group<TAB>text`, got `{header}`"),
        ));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, split, group, raw] = fields[..] else {
            return Err(bad(
                i + 2,
                format!("expected 4 tab-separated fields, got {}", fields.len()),
            ));
        };
        if split != "train" && split != "test" {
            return Err(bad(
                i + 2,
                format!("split must be `train` or `test`, got `{split}`"),
            ));
        }
        let text = normalize_text(raw);
        if text.is_empty() {
            return Err(bad(i + 2, format!("transcript `{raw}` has no letters")));
        }
        out.push(Entry {
            path: PathBuf::from(path),
            split: split.to_string(),
            group: group.to_string(),
            text,
        });
    }
    if !out.iter().any(|e| e.split == "train") {
        return Err(Error::Data(format!(
            "{} has no `train` row",
            path.display()
        )));
    }
    Ok(out)
}

/// An utterance ready for the model.
#[derive(Debug, Clone)]
pub struct Utterance {
    /// Normalized log-mel features, row-major `[frames, 80]`.
    pub features: Vec<f32>,
    /// The transcript's label ids.
    pub labels: Vec<usize>,
    /// The transcript.
    pub text: String,
    /// The reporting group.
    pub group: String,
}

impl Utterance {
    /// Feature frames (10 ms each).
    pub fn frames(&self) -> usize {
        self.features.len() / N_MELS
    }
}

/// Padded features `[batch, frames, 80]` (zero frames after each utterance), the frames of
/// each and their labels; with `augment`, each utterance's features masked by SpecAugment
/// first (drawing from the rng in batch order).
fn batch_of(
    utts: &[&Utterance],
    augment: Option<(&SpecAugment, &mut ChaCha8Rng)>,
) -> Result<(Tensor, Vec<usize>, Vec<Vec<usize>>)> {
    let frames: Vec<usize> = utts.iter().map(|u| u.frames()).collect();
    let t = frames.iter().copied().max().unwrap_or(0);
    let mut x = vec![0f32; utts.len() * t * N_MELS];
    let mut augment = augment;
    for (u, row) in utts.iter().zip(x.chunks_mut(t * N_MELS)) {
        let dst = &mut row[..u.features.len()];
        dst.copy_from_slice(&u.features);
        if let Some((spec, rng)) = augment.as_mut() {
            spec.apply(dst, rng)?;
        }
    }
    let labels = utts.iter().map(|u| u.labels.clone()).collect();
    Ok((
        Tensor::from_vec(x, &[utts.len(), t, N_MELS])?,
        frames,
        labels,
    ))
}

fn parse_share(s: &str) -> std::result::Result<(String, f64), String> {
    let (group, frac) = s
        .split_once('=')
        .ok_or_else(|| format!("expected GROUP=FRACTION (e.g. real=0.25), got `{s}`"))?;
    let frac: f64 = frac
        .parse()
        .map_err(|_| format!("`{frac}` is not a number"))?;
    if !(0.0..=1.0).contains(&frac) {
        return Err(format!("the fraction must be in [0, 1], got {frac}"));
    }
    Ok((group.to_string(), frac))
}

/// `asr`'s own settings and flags (`#[command(flatten)]` beside
/// [`crate::train::TrainArgs`]), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AsrArgs {
    /// Utterances per batch (drawn with similar lengths, so little padding).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 144)]
    pub d_model: usize,
    /// Number of transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layers: usize,
    /// Attention heads per block (must divide --d-model).
    #[arg(long, default_value_t = 4)]
    pub n_heads: usize,
    /// Hidden width of each MLP in units of --d-model.
    #[arg(long, default_value_t = 4)]
    pub mlp_ratio: usize,
    /// Dropout probability (attention and residual branches).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// SpecAugment masks on training features (`--spec-augment false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub spec_augment: bool,
    /// The share of batches drawn from one group of the training split, as GROUP=FRACTION
    /// (the rest from the other groups; the few real recordings would otherwise be ~5% of
    /// what the model hears). A group absent from the data is ignored.
    #[arg(long, default_value = "real=0.25", value_parser = parse_share)]
    pub focus: (String, f64),
    /// Directory with manifest.tsv (header: the tab-separated `path`, `split`, `group`, `text`) and the WAV files it
    /// lists. The default is built automatically with scripts/fetch-speech.sh when missing.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Training utterances held out for validation (model selection); the test split is
    /// only used for the error rates reported at the end.
    #[arg(long, default_value_t = 200)]
    pub val_utterances: usize,
    /// Training utterances longer than this many seconds are skipped.
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds: f64,
}

impl AsrArgs {
    /// The model of these settings for `train`'s variant.
    pub fn model_config(&self, train: &TrainConfig) -> AsrConfig {
        let (norm, sigma_reparam) = train.variant.layout();
        AsrConfig {
            n_features: N_MELS,
            n_classes: N_CLASSES,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            dropout: self.dropout,
            norm,
            sigma_reparam,
            gamma_one: train.gamma_one,
            conv_kernel: 7,
            conv_stride: 3,
        }
    }
}

/// SpecAugment of training features: one frequency mask of up to 15 bins and two time masks
/// of up to 40 frames (a fifth of the utterance at most), lighter than LibriSpeech's
/// policies for these short utterances.
const SPEC_AUGMENT: SpecAugment = SpecAugment {
    n_freq_masks: 1,
    freq_width: 15,
    n_time_masks: 2,
    time_width: 40,
    time_ratio: 0.2,
};

/// The `asr` task: the utterances, the model and the batch pools.
pub struct Asr {
    cfg: AsrArgs,
    train: Vec<Utterance>,
    val: Vec<Utterance>,
    test: Vec<Utterance>,
    /// Indices into `train` of the focus group and of the rest, each sorted by length.
    pools: [Vec<usize>; 2],
    model: AsrTransformer,
}

/// The features of every entry of `entries` under `dir`, computed in parallel (the same
/// values at any thread count).
fn load_utterances(dir: &Path, entries: &[&Entry]) -> Result<Vec<Utterance>> {
    let mel = LogMel::new();
    entries
        .par_iter()
        .map(|e| {
            Ok(Utterance {
                features: audio::features(&dir.join(&e.path), &mel)?,
                labels: encode(&e.text),
                text: e.text.clone(),
                group: e.group.clone(),
            })
        })
        .collect()
}

/// Per utterance of `utts`, the greedy transcript and the summed CTC loss, by `model` in
/// eval mode, [`EVAL_BATCH`] utterances of similar length at a time.
fn transcribe(
    model: &AsrTransformer,
    utts: &[Utterance],
    rngs: &mut Rngs,
) -> Result<(Vec<String>, f64)> {
    let mut order: Vec<usize> = (0..utts.len()).collect();
    order.sort_by_key(|&i| utts[i].frames());
    let mut out = vec![String::new(); utts.len()];
    let mut loss = 0.0;
    for idx in order.chunks(EVAL_BATCH) {
        let batch: Vec<&Utterance> = idx.iter().map(|&i| &utts[i]).collect();
        let (x, frames, labels) = batch_of(&batch, None)?;
        let (lp, l) = no_grad(|| -> nn::Result<(Tensor, Tensor)> {
            let lp = model.forward(&x, &frames, &mut rngs.dropout)?;
            let l = model.loss(&lp, &frames, &labels)?;
            Ok((lp, l))
        })?;
        loss += l.item()? * idx.len() as f64;
        let (t, b) = (lp.shape()[0], lp.shape()[1]);
        let lp = lp.to_vec::<f32>()?;
        for (j, (&i, &n)) in idx.iter().zip(&frames).enumerate() {
            let rows: Vec<f32> = (0..model.output_len(n).min(t))
                .flat_map(|s| lp[(s * b + j) * N_CLASSES..][..N_CLASSES].iter().copied())
                .collect();
            out[i] = decode(&greedy_decode(&rows, N_CLASSES));
        }
    }
    Ok((out, loss))
}

impl Asr {
    /// `n` training utterances of similar length: a pool (the focus group's with the
    /// `--focus` probability), then a window of `n` consecutive utterances in its length
    /// order at a random place.
    fn draw(&self, n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        let [focus, rest] = &self.pools;
        let pick_focus = rng.gen::<f64>() < self.cfg.focus.1;
        let pool = match (focus.is_empty(), rest.is_empty()) {
            (false, true) => focus,
            (true, _) => rest,
            (false, false) if pick_focus => focus,
            _ => rest,
        };
        let n = n.min(pool.len());
        let start = rng.gen_range(0..=pool.len() - n);
        pool[start..start + n].to_vec()
    }
}

impl Task for Asr {
    type Config = AsrArgs;
    type Model = AsrTransformer;
    const NAME: &'static str = "asr";
    const LOSS_UNIT: &'static str = "CTC nats per character";
    const ITEM: &'static str = "utt";

    /// Baselines (`pre-ln`, `post-ln`) and σReparam with LayerNorm: AdamW lr 3e-3, weight
    /// decay 0.01, 150 warmup steps, cosine decay to 0. σReparam without LayerNorm: SGD
    /// with momentum 0.9, lr 0.1, no warmup, no weight decay. 2400 steps of 32 utterances.
    fn defaults(variant: Variant) -> TrainConfig {
        TrainConfig {
            lr: 3e-3,
            weight_decay: 0.01,
            warmup: 150,
            min_lr_ratio: 0.0,
            steps: 2400,
            eval_every: 250,
            checkpoint_every: 250,
            log_every: 20,
            ..TrainConfig::new(variant)
        }
        .simplified_for_sigma_reparam(0.1)
    }

    /// Positive sizes, `--dropout` in [0, 1), `--n-heads` dividing `--d-model`,
    /// `--max-seconds` above 0.1.
    fn validate(cfg: &AsrArgs, _train: &TrainConfig) -> Result<()> {
        positive(&[
            ("--batch-size", cfg.batch_size),
            ("--d-model", cfg.d_model),
            ("--n-layers", cfg.n_layers),
            ("--n-heads", cfg.n_heads),
            ("--mlp-ratio", cfg.mlp_ratio),
            ("--val-utterances", cfg.val_utterances),
        ])?;
        check_transformer(cfg.d_model, cfg.n_heads, cfg.dropout)?;
        if !(cfg.max_seconds >= 0.1 && cfg.max_seconds.is_finite()) {
            return Err(Error::Config(format!(
                "--max-seconds must be at least 0.1, got {}",
                cfg.max_seconds
            )));
        }
        Ok(())
    }

    fn load(cfg: &AsrArgs, setup: Setup, init: &mut ChaCha8Rng) -> Result<Self> {
        SPEECH.ensure(&cfg.data, setup.fetch, setup.verbose)?;
        let entries = read_manifest(&cfg.data)?;
        let t0 = std::time::Instant::now();
        let of =
            |split: &str| -> Vec<&Entry> { entries.iter().filter(|e| e.split == split).collect() };
        let mut train = load_utterances(&cfg.data, &of("train"))?;
        let test = load_utterances(&cfg.data, &of("test"))?;
        let max_frames = (cfg.max_seconds * 100.0) as usize;
        train.retain(|u| u.frames() <= max_frames);
        if cfg.val_utterances >= train.len() {
            return Err(Error::Config(format!(
                "--val-utterances {} leaves no training utterance of the {} in {}",
                cfg.val_utterances,
                train.len(),
                cfg.data.display()
            )));
        }
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut seeded(SPLIT_SEED, 1));
        let held: std::collections::HashSet<usize> =
            order[..cfg.val_utterances].iter().copied().collect();
        let (val, train): (Vec<_>, Vec<_>) = train
            .into_iter()
            .enumerate()
            .partition(|(i, _)| held.contains(i));
        let val: Vec<Utterance> = val.into_iter().map(|p| p.1).collect();
        let train: Vec<Utterance> = train.into_iter().map(|p| p.1).collect();
        if let Some(saved) = setup.saved {
            if saved["train_utterances"].as_u64() != Some(train.len() as u64) {
                return Err(Error::Data(format!(
                    "{} gives {} training utterances, the checkpoint's run had {}; resume with \
                     the same data and --val-utterances/--max-seconds",
                    cfg.data.display(),
                    train.len(),
                    saved["train_utterances"]
                )));
            }
        }
        let mut pools = [Vec::new(), Vec::new()];
        for (i, u) in train.iter().enumerate() {
            pools[usize::from(u.group != cfg.focus.0)].push(i);
        }
        for p in &mut pools {
            p.sort_by_key(|&i| (train[i].frames(), i));
        }
        let model_cfg = cfg.model_config(setup.train);
        let model = AsrTransformer::new(model_cfg, DType::F32, init)?;
        let longest = train.iter().map(Utterance::frames).max().unwrap_or(0);
        let steps = model.output_len(longest);
        let what = |need: &str| {
            format!(
                "--batch-size {} needs about {need} for the attention matrices alone ({} \
                 layers × {} heads × {steps}² steps × 4 bytes per utterance)",
                cfg.batch_size, cfg.n_layers, cfg.n_heads
            )
        };
        let bytes = product(&[cfg.n_layers, cfg.batch_size, cfg.n_heads, steps, steps, 4]);
        check_memory(bytes, what, "lower --batch-size or --max-seconds")?;
        if setup.verbose {
            let mut groups: BTreeMap<(&str, &str), (usize, f64)> = BTreeMap::new();
            for (split, utts) in [("train", &train), ("val", &val), ("test", &test)] {
                for u in utts.iter() {
                    let g = groups.entry((split, &u.group)).or_default();
                    g.0 += 1;
                    g.1 += u.frames() as f64 / 360_000.0;
                }
            }
            let list: Vec<String> = groups
                .iter()
                .map(|((s, g), (n, h))| format!("{s}/{g} {n} ({h:.2} h)"))
                .collect();
            eprintln!(
                "data: {}: {} (features in {:.1} s)",
                cfg.data.display(),
                list.join(", "),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(Asr {
            cfg: cfg.clone(),
            train,
            val,
            test,
            pools,
            model,
        })
    }

    fn build_model(
        cfg: &AsrArgs,
        train: &TrainConfig,
        _state: &Value,
        init: &mut ChaCha8Rng,
    ) -> Result<AsrTransformer> {
        Ok(AsrTransformer::new(
            cfg.model_config(train),
            DType::F32,
            init,
        )?)
    }

    fn model(&self) -> &AsrTransformer {
        &self.model
    }

    /// The number of training utterances (a resumed run must see the same data).
    fn state(&self) -> Value {
        json!({ "train_utterances": self.train.len() })
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "model: conv1d(80→{}, kernel 7, stride 3) + GLU, sinusoidal positions, d_model {}, \
             {} layers, {} heads, MLP ×{}, CTC over {} classes; batches of {} ({} {:.0}%); \
             SpecAugment {}",
            2 * c.d_model,
            c.d_model,
            c.n_layers,
            c.n_heads,
            c.mlp_ratio,
            N_CLASSES,
            c.batch_size,
            c.focus.0,
            100.0 * c.focus.1,
            if c.spec_augment { "on" } else { "off" }
        )
    }

    fn items_per_step(&self) -> usize {
        self.cfg.batch_size
    }

    fn loss(&mut self, rngs: &mut Rngs) -> Result<Tensor> {
        let idx = self.draw(self.cfg.batch_size, &mut rngs.batch);
        let utts: Vec<&Utterance> = idx.iter().map(|&i| &self.train[i]).collect();
        let augment = self
            .cfg
            .spec_augment
            .then_some((&SPEC_AUGMENT, &mut rngs.batch));
        let (x, frames, labels) = batch_of(&utts, augment)?;
        let lp = self.model.forward(&x, &frames, &mut rngs.dropout)?;
        Ok(self.model.loss(&lp, &frames, &labels)?)
    }

    /// `val_loss` (CTC nats per character), `val_cer` and `val_wer` on the validation
    /// utterances, greedy decoding.
    fn evaluate(&mut self, rngs: &mut Rngs) -> Result<Vec<(&'static str, f64)>> {
        let (hyps, loss) = transcribe(&self.model, &self.val, rngs)?;
        let mut rates = ErrorRates::default();
        for (h, u) in hyps.iter().zip(&self.val) {
            rates.add(h, &u.text);
        }
        Ok(vec![
            ("val_loss", loss / self.val.len() as f64),
            ("val_cer", rates.cer()),
            ("val_wer", rates.wer()),
        ])
    }

    fn eval_line(metrics: &[(&'static str, f64)]) -> String {
        let get = |k: &str| metrics.iter().find(|m| m.0 == k).map_or(f64::NAN, |m| m.1);
        format!(
            "val {:.4} nats/char, CER {:.1}%, WER {:.1}%",
            get("val_loss"),
            100.0 * get("val_cer"),
            100.0 * get("val_wer")
        )
    }

    /// Query and key projections per layer (they set the attention logits) and the output
    /// layer.
    fn plots_sigma_of(name: &str) -> bool {
        name.ends_with("attn.q") || name.ends_with("attn.k") || name == "head"
    }

    /// The test split, once, per group: `test_cer_<group>`, `test_wer_<group>` (`-` in
    /// group names as `_`), with a few decoded utterances printed beside their references.
    fn finish(
        &mut self,
        _out: &Path,
        rng: &mut ChaCha8Rng,
        verbose: bool,
    ) -> Result<Vec<(String, f64)>> {
        self.model.eval();
        self.model.set_record_entropy(false);
        let mut rngs = Rngs {
            batch: rng.clone(),
            dropout: rng.clone(),
        };
        let (hyps, _) = transcribe(&self.model, &self.test, &mut rngs)?;
        let mut groups: BTreeMap<&str, (ErrorRates, Vec<usize>)> = BTreeMap::new();
        for (i, (h, u)) in hyps.iter().zip(&self.test).enumerate() {
            let g = groups.entry(&u.group).or_default();
            g.0.add(h, &u.text);
            g.1.push(i);
        }
        let mut out = Vec::new();
        let mut report = String::new();
        for (group, (rates, idx)) in &groups {
            let key = group.replace('-', "_");
            out.push((format!("test_cer_{key}"), rates.cer()));
            out.push((format!("test_wer_{key}"), rates.wer()));
            report += &format!(
                "test {group} ({} utterances): CER {:.1}%, WER {:.1}%\n",
                idx.len(),
                100.0 * rates.cer(),
                100.0 * rates.wer()
            );
            for &i in idx.iter().take(EXAMPLES) {
                report += &format!("    ref: {}\n    hyp: {}\n", self.test[i].text, hyps[i]);
            }
        }
        if verbose {
            use std::io::Write;
            let _ = write!(std::io::stdout(), "{report}");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_normalize_encode_and_decode() {
        assert_eq!(
            normalize_text("  Hello,  World!  It’s 4-ever_ok. "),
            "hello world it's ever ok"
        );
        assert_eq!(normalize_text("123 !?"), "");
        let ids = encode("it's a b");
        assert_eq!(ids, [11, 22, 2, 21, 1, 3, 1, 4]);
        assert_eq!(decode(&ids), "it's a b");
        assert_eq!(decode(&[0, 29, 3]), "a");
    }

    #[test]
    fn error_rates_count_edits_over_reference_lengths() {
        let mut r = ErrorRates::default();
        r.add("the cat sat", "the cat sat");
        assert_eq!((r.cer(), r.wer()), (0.0, 0.0));
        r.add("a dog", "the dog");
        // "a dog" vs "the dog": 3 char edits (substitute a→t, insert h, e) over 7 + 11.
        assert_eq!(r.char_edits, 3);
        assert_eq!(r.chars, 18);
        assert_eq!((r.word_edits, r.words), (1, 5));
        assert!((r.wer() - 0.2).abs() < 1e-12);
        assert!(ErrorRates::default().cer().is_nan());
    }

    #[test]
    fn manifests_with_bad_rows_are_errors_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("asr-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |s: &str| std::fs::write(dir.join(MANIFEST), s).unwrap();
        write(
            "path\tsplit\tgroup\ttext\na.wav\ttrain\treal\tHello there.\nb.wav\ttest\tsyn\tYes\n",
        );
        let m = read_manifest(&dir).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].text, "hello there");
        assert_eq!((m[1].split.as_str(), m[1].group.as_str()), ("test", "syn"));
        for (bad, want) in [
            ("path\ttext\n", "line 1"),
            (
                "path\tsplit\tgroup\ttext\na.wav\ttrain\treal\n",
                "line 2: expected 4",
            ),
            (
                "path\tsplit\tgroup\ttext\na.wav\tdev\treal\thi\n",
                "line 2: split",
            ),
            (
                "path\tsplit\tgroup\ttext\na.wav\ttrain\treal\t42\n",
                "no letters",
            ),
            (
                "path\tsplit\tgroup\ttext\na.wav\ttest\treal\thi\n",
                "no `train` row",
            ),
        ] {
            write(bad);
            let err = read_manifest(&dir).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains(MANIFEST),
                "{bad:?}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let err = read_manifest(&dir).unwrap_err().to_string();
        assert!(err.contains(MANIFEST), "{err}");
    }
}
