//! The `ssl` task: SimCLR pretraining of a ViT encoder on the training images without
//! their labels ([`nn::SimClr`], [`nn::nt_xent`]), on the shared harness ([`crate::train`]),
//! then a linear probe on the frozen encoder's features ([`crate::probe`]) beside the same
//! probe on raw pixels and on the untrained encoder.

use crate::images::{Epochs, Images};
use crate::probe::{Features, LinearProbe, ProbeConfig};
use crate::train::{
    above_zero, at_least_zero, load_run, positive, seeded, Rngs, Setup, Task, TrainConfig, Variant,
};
use crate::views::{plain, two_views, PixelStats, ViewAugment};
use crate::vision::{self, saved_size, Splits, VisionArgs};
use crate::{Error, Result};
use engine::{no_grad, DType, Reduction, Tensor};
use nn::simclr::{nt_xent, nt_xent_logits};
use nn::{ModuleExt, SimClr};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Images per forward pass when extracting features (no graph is kept).
const FEATURE_BATCH: usize = 500;
/// Validation images whose views give `val_loss` and `val_contrastive_accuracy` at each
/// evaluation.
const VAL_IMAGES: usize = 1024;
/// Seed (stream 1) of the validation views: the same views at every evaluation and in
/// every run, so that curves compare.
const VAL_VIEW_SEED: u64 = 1;

/// `ssl`'s own settings and flags (`#[command(flatten)]` beside
/// [`crate::train::TrainArgs`]), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct SslConfig {
    /// Images per batch (each gives two views, so the NT-Xent softmax runs over 2·N − 1).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// The data and the ViT encoder.
    #[command(flatten)]
    #[serde(flatten)]
    pub vision: VisionArgs,
    /// Hidden width of the projection MLP.
    #[arg(long, default_value_t = 256)]
    pub proj_hidden: usize,
    /// Output width of the projection MLP (where NT-Xent compares views).
    #[arg(long, default_value_t = 64)]
    pub proj_dim: usize,
    /// NT-Xent temperature τ (cosine similarities are divided by it).
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Smallest fraction of an image's area a random resized crop keeps, in (0, 1].
    #[arg(long, default_value_t = 0.5)]
    pub crop_min: f64,
    /// Random horizontal flips of the views (`--flip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
    /// Probability of the brightness/contrast jitter of a view.
    #[arg(long, default_value_t = 0.8)]
    pub jitter: f64,
    /// Brightness jitter: factors uniform in [1 − b, 1 + b].
    #[arg(long, default_value_t = 0.4)]
    pub brightness: f64,
    /// Contrast jitter: factors uniform in [1 − c, 1 + c].
    #[arg(long, default_value_t = 0.4)]
    pub contrast: f64,
    /// Probability of a Gaussian blur (σ uniform in 0.1–2 pixels) of a view.
    #[arg(long, default_value_t = 0.0)]
    pub blur: f64,
    /// Full-batch AdamW steps of the linear probe (the step kept is the best on the
    /// validation split, checked every 50).
    #[arg(long, default_value_t = 1000)]
    pub probe_steps: usize,
    /// Peak learning rate of the linear probe (cosine decay to 0).
    #[arg(long, default_value_t = 0.05)]
    pub probe_lr: f64,
    /// Weight decay of the linear probe.
    #[arg(long, default_value_t = 0.0)]
    pub probe_weight_decay: f64,
    /// Also probe raw pixels and the untrained encoder (the controls SimCLR must beat;
    /// `--controls false` to skip them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub controls: bool,
}

impl SslConfig {
    /// The flags' defaults on the data in `data`.
    pub fn new(data: PathBuf) -> SslConfig {
        use clap::{Args, FromArgMatches};
        let cmd = SslConfig::augment_args(clap::Command::new("ssl"));
        let matches = cmd.get_matches_from(["ssl"]);
        let mut cfg = SslConfig::from_arg_matches(&matches).expect("the defaults parse");
        cfg.vision.data = data;
        cfg
    }

    /// The augmentation of the views.
    pub fn augment(&self) -> ViewAugment {
        ViewAugment {
            crop_min: self.crop_min,
            flip: self.flip,
            jitter: self.jitter,
            brightness: self.brightness,
            contrast: self.contrast,
            blur: self.blur,
        }
    }

    /// The linear probe's settings.
    pub fn probe(&self) -> ProbeConfig {
        ProbeConfig {
            steps: self.probe_steps,
            lr: self.probe_lr,
            weight_decay: self.probe_weight_decay,
        }
    }

    /// The model of this configuration for `train`'s variant on `height × width` images,
    /// weights from `init`.
    pub fn model(
        &self,
        train: &TrainConfig,
        height: usize,
        width: usize,
        init: &mut ChaCha8Rng,
    ) -> Result<SimClr> {
        let vit = self.vision.vit_config(train, height, width, 0);
        Ok(SimClr::new(
            vit,
            self.proj_hidden,
            self.proj_dim,
            DType::F32,
            init,
        )?)
    }

    /// The model as a run of `train`'s seed initializes it (stream 0), in eval mode: the
    /// untrained encoder of the probe's control.
    pub fn untrained(&self, train: &TrainConfig, height: usize, width: usize) -> Result<SimClr> {
        let model = self.model(train, height, width, &mut seeded(train.seed, 0))?;
        model.eval();
        Ok(model)
    }
}

/// The `ssl` task: the image splits, their pixel statistics, the model and where the
/// epochs stand.
pub struct Ssl {
    cfg: SslConfig,
    train_cfg: TrainConfig,
    splits: Splits,
    stats: PixelStats,
    model: SimClr,
    epochs: Epochs,
}

/// The pooled encoder features of every image of `images`, not augmented, by `model` in
/// eval mode (entropy recording is turned off).
fn features(model: &SimClr, images: &Images, stats: &PixelStats) -> Result<Features> {
    model.set_record_entropy(false);
    let all: Vec<usize> = (0..images.len()).collect();
    let mut values = Vec::new();
    let rng = &mut seeded(0, 2);
    for idx in all.chunks(FEATURE_BATCH) {
        let x = plain(images, idx, stats);
        let x = Tensor::from_vec(x, &[idx.len(), 1, images.height, images.width])?;
        values.extend(no_grad(|| model.features(&x, rng))?.to_vec::<f32>()?);
    }
    Ok(Features {
        dim: model.encoder().config().d_model,
        values,
        labels: images.labels.clone(),
    })
}

/// The normalized pixels of every image as features.
fn pixels(images: &Images, stats: &PixelStats) -> Features {
    let all: Vec<usize> = (0..images.len()).collect();
    Features {
        dim: images.height * images.width,
        values: plain(images, &all, stats),
        labels: images.labels.clone(),
    }
}

/// The linear probes of a SimCLR encoder and its controls: each trained on the training
/// split's features ([`LinearProbe::fit`]), then scored on the validation split (the figure
/// recipes are chosen on) and on the test split (the reported one).
///
/// Returns `test_accuracy`, `val_accuracy_probe` and `train_accuracy_probe` for `model`;
/// with `untrained` (the encoder as its run initialized it) also the same probe on raw
/// normalized pixels (`…_raw_pixels`) and on the untrained encoder (`…_random_encoder`),
/// test and validation accuracy each. Prints a line per probe when `verbose`.
pub fn probe_report(
    model: &SimClr,
    untrained: Option<&SimClr>,
    splits: &Splits,
    stats: &PixelStats,
    cfg: &SslConfig,
    verbose: bool,
) -> Result<Vec<(String, f64)>> {
    let n_classes = cfg.vision.n_classes;
    let probe = |what: &str, f: &dyn Fn(&Images) -> Result<Features>| -> Result<[f64; 3]> {
        let val = f(&splits.val)?;
        let fitted = LinearProbe::fit(&f(&splits.train)?, &val, n_classes, &cfg.probe())?;
        let (val, test) = (fitted.val_accuracy, fitted.accuracy(&f(&splits.test)?)?);
        if verbose {
            eprintln!(
                "linear probe on {what}: test accuracy {:.2}% (validation {:.2}%, train \
                 {:.2}%, loss {:.4}, step {} kept)",
                100.0 * test,
                100.0 * val,
                100.0 * fitted.train_accuracy,
                fitted.train_loss,
                fitted.step
            );
        }
        Ok([test, val, fitted.train_accuracy])
    };
    let [test, val, train] = probe("the SimCLR encoder", &|i| features(model, i, stats))?;
    let mut out = vec![
        ("test_accuracy".to_string(), test),
        ("val_accuracy_probe".to_string(), val),
        ("train_accuracy_probe".to_string(), train),
    ];
    if let Some(untrained) = untrained {
        let [test, val, _] = probe("raw pixels", &|i| Ok(pixels(i, stats)))?;
        out.push(("test_accuracy_raw_pixels".into(), test));
        out.push(("val_accuracy_raw_pixels".into(), val));
        let random = |i: &Images| features(untrained, i, stats);
        let [test, val, _] = probe("the untrained encoder", &random)?;
        out.push(("test_accuracy_random_encoder".into(), test));
        out.push(("val_accuracy_random_encoder".into(), val));
    }
    Ok(out)
}

/// The probe settings of `ssl probe`, each the saved run's when not given.
#[derive(Debug, Clone, Copy, Default, PartialEq, clap::Args)]
pub struct ProbeArgs {
    /// Full-batch AdamW steps of the probe [default: the run's].
    #[arg(long)]
    pub probe_steps: Option<usize>,
    /// Peak learning rate of the probe, decayed to 0 by a cosine [default: the run's].
    #[arg(long)]
    pub probe_lr: Option<f64>,
    /// Weight decay of the probe [default: the run's].
    #[arg(long)]
    pub probe_weight_decay: Option<f64>,
}

/// The probes of [`probe_report`] for the encoder saved in run directory `dir`, with the
/// run's probe settings overridden by `probe` (`ssl probe --from DIR`): the data is loaded
/// from the run's `--data` (not fetched), and the untrained encoder (with `controls`) is
/// rebuilt from the run's seed. Errors as [`load_run`], the settings' checks and the data's.
pub fn probe_run(
    dir: &Path,
    probe: ProbeArgs,
    controls: bool,
    verbose: bool,
) -> Result<Vec<(String, f64)>> {
    let run = load_run::<Ssl>(dir)?;
    let saved = run.task;
    let cfg = SslConfig {
        probe_steps: probe.probe_steps.unwrap_or(saved.probe_steps),
        probe_lr: probe.probe_lr.unwrap_or(saved.probe_lr),
        probe_weight_decay: probe.probe_weight_decay.unwrap_or(saved.probe_weight_decay),
        ..saved
    };
    Ssl::validate(&cfg, &run.train)?;
    let setup = Setup {
        train: &run.train,
        saved: None,
        fetch: false,
        verbose,
    };
    let (splits, _) = cfg.vision.load(setup, cfg.batch_size, 2)?;
    let stats = PixelStats::of(&splits.train);
    let (h, w) = (splits.train.height, splits.train.width);
    let untrained = controls
        .then(|| cfg.untrained(&run.train, h, w))
        .transpose()?;
    probe_report(
        &run.model,
        untrained.as_ref(),
        &splits,
        &stats,
        &cfg,
        verbose,
    )
}

impl Task for Ssl {
    type Config = SslConfig;
    type Model = SimClr;
    const NAME: &'static str = "ssl";
    const LOSS_UNIT: &'static str = "NT-Xent, nats per view";
    const ITEM: &'static str = "img";

    /// Baselines (`pre-ln`, `post-ln`) and σReparam with LayerNorm: AdamW lr 2e-3,
    /// weight decay 0.05, 100 warmup steps, cosine decay to 0. σReparam without LayerNorm:
    /// SGD with momentum 0.9, lr 0.1, no warmup, no weight decay (the paper's simplified
    /// recipe). 2500 steps of 256 images (11.6 epochs of the 55,000 training images).
    fn defaults(variant: Variant) -> TrainConfig {
        TrainConfig {
            lr: 2e-3,
            weight_decay: 0.05,
            warmup: 100,
            min_lr_ratio: 0.0,
            steps: 2500,
            eval_every: 250,
            checkpoint_every: 250,
            log_every: 10,
            ..TrainConfig::new(variant)
        }
        .simplified_for_sigma_reparam(0.1)
    }

    /// The flags of [`VisionArgs::validate`], at least 2 images per batch and held out,
    /// positive projection sizes, a temperature finite and > 0, the augmentation's ranges
    /// and the probe's settings.
    fn validate(cfg: &SslConfig, _train: &TrainConfig) -> Result<()> {
        positive(&[
            ("--proj-hidden", cfg.proj_hidden),
            ("--proj-dim", cfg.proj_dim),
            ("--probe-steps", cfg.probe_steps),
        ])?;
        above_zero(&[
            ("--temperature", cfg.temperature),
            ("--probe-lr", cfg.probe_lr),
        ])?;
        for (flag, n) in [
            ("--batch-size", cfg.batch_size),
            ("--val-images", cfg.vision.val_images),
        ] {
            if n < 2 {
                return Err(Error::Config(format!(
                    "{flag} must be at least 2 (NT-Xent contrasts each image's views with \
                     another image's), got {n}"
                )));
            }
        }
        at_least_zero(&[("--probe-weight-decay", cfg.probe_weight_decay)])?;
        cfg.augment().validate()?;
        cfg.vision.validate()
    }

    fn load(cfg: &SslConfig, setup: Setup, init: &mut ChaCha8Rng) -> Result<Self> {
        let (splits, epochs) = cfg.vision.load(setup, cfg.batch_size, 2)?;
        let stats = PixelStats::of(&splits.train);
        let (h, w) = (splits.train.height, splits.train.width);
        let model = cfg.model(setup.train, h, w, init)?;
        Ok(Ssl {
            cfg: cfg.clone(),
            train_cfg: setup.train.clone(),
            splits,
            stats,
            model,
            epochs,
        })
    }

    fn build_model(
        cfg: &SslConfig,
        train: &TrainConfig,
        state: &Value,
        init: &mut ChaCha8Rng,
    ) -> Result<SimClr> {
        let (h, w) = saved_size(state)?;
        cfg.model(train, h, w, init)
    }

    fn model(&self) -> &SimClr {
        &self.model
    }

    /// The image size and where the epochs stand (epoch, images of it used).
    fn state(&self) -> Value {
        vision::state(&self.splits.train, &self.epochs)
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "model: SimCLR, {} encoder, projection {}→{}→{}, τ {}; batches of {} images (2 \
             views each); views: crop ≥ {} of the area, flips {}, jitter p {} (brightness \
             {}, contrast {}), blur p {}",
            c.vision.describe(self.model.encoder().config()),
            c.vision.d_model,
            c.proj_hidden,
            c.proj_dim,
            c.temperature,
            c.batch_size,
            c.crop_min,
            if c.flip { "on" } else { "off" },
            c.jitter,
            c.brightness,
            c.contrast,
            c.blur
        )
    }

    fn items_per_step(&self) -> usize {
        self.cfg.batch_size
    }

    fn loss(&mut self, rngs: &mut Rngs) -> Result<Tensor> {
        let b = self.cfg.batch_size;
        let train = &self.splits.train;
        let idx = self.epochs.next(b);
        let x = two_views(
            train,
            idx,
            &self.cfg.augment(),
            &self.stats,
            &mut rngs.batch,
        )?;
        let x = Tensor::from_vec(x, &[2 * b, 1, train.height, train.width])?;
        let z = self.model.forward(&x, &mut rngs.dropout)?;
        Ok(nt_xent(&z, self.cfg.temperature)?)
    }

    /// On two fixed views of each of the first [`VAL_IMAGES`] validation images, in
    /// batches of `--batch-size` images: `val_loss` (NT-Xent, nats per view) and
    /// `val_contrastive_accuracy`, the fraction of views whose most similar other view is
    /// their positive.
    fn evaluate(&mut self, rngs: &mut Rngs) -> Result<Vec<(&'static str, f64)>> {
        let val = &self.splits.val;
        let all: Vec<usize> = (0..val.len().min(VAL_IMAGES)).collect();
        let mut views_rng = seeded(VAL_VIEW_SEED, 1);
        let (mut loss, mut hits, mut count) = (0.0, 0usize, 0usize);
        for idx in all.chunks(self.cfg.batch_size).filter(|c| c.len() > 1) {
            let x = two_views(val, idx, &self.cfg.augment(), &self.stats, &mut views_rng)?;
            let x = Tensor::from_vec(x, &[2 * idx.len(), 1, val.height, val.width])?;
            let z = no_grad(|| self.model.forward(&x, &mut rngs.dropout))?;
            let (logits, targets) = nt_xent_logits(&z, self.cfg.temperature)?;
            loss += logits
                .cross_entropy(&targets, None, Reduction::Sum)?
                .item()?;
            // hits / n · n, rounded: the exact count.
            hits += (nn::accuracy(&logits, &targets)? * targets.len() as f64).round() as usize;
            count += targets.len();
        }
        let count = count.max(1) as f64;
        Ok(vec![
            ("val_loss", loss / count),
            ("val_contrastive_accuracy", hits as f64 / count),
        ])
    }

    fn eval_line(metrics: &[(&'static str, f64)]) -> String {
        let get = |k: &str| metrics.iter().find(|m| m.0 == k).map_or(f64::NAN, |m| m.1);
        format!(
            "val NT-Xent {:.4} nats, positive found {:.2}%",
            get("val_loss"),
            100.0 * get("val_contrastive_accuracy")
        )
    }

    /// Query and key projections per layer (they set the attention logits), the patch
    /// embedding and the projection head's output layer.
    fn plots_sigma_of(name: &str) -> bool {
        name.ends_with("attn.q")
            || name.ends_with("attn.k")
            || name == "encoder.patch_embed.proj"
            || name == "projection.proj"
    }

    /// The probes of [`probe_report`]: on the trained encoder, and with `--controls` on raw
    /// pixels and on the encoder as this run's seed initialized it.
    fn finish(
        &mut self,
        _out: &Path,
        _rng: &mut ChaCha8Rng,
        verbose: bool,
    ) -> Result<Vec<(String, f64)>> {
        self.model.eval();
        let (h, w) = (self.splits.train.height, self.splits.train.width);
        let untrained = (self.cfg.controls)
            .then(|| self.cfg.untrained(&self.train_cfg, h, w))
            .transpose()?;
        probe_report(
            &self.model,
            untrained.as_ref(),
            &self.splits,
            &self.stats,
            &self.cfg,
            verbose,
        )
    }
}
