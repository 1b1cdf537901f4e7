//! The `classification` task: a Vision Transformer trained on Fashion-MNIST (or any set of
//! IDX image files), on the shared harness ([`crate::train`]), with a held-out validation
//! split for model selection and the test set evaluated once at the end (accuracy and a
//! confusion matrix).

use crate::confusion::ConfusionMatrix;
use crate::images::{Augment, Epochs, Images, FASHION_CLASSES};
use crate::train::{positive, Rngs, Setup, Task, TrainConfig, Variant};
use crate::vision::{self, saved_size, Splits, VisionArgs};
use crate::{Error, Result};
use engine::{no_grad, DType, Reduction, Tensor};
use nn::{ModuleExt, Vit, VitConfig};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Images per forward pass when evaluating (no graph is kept).
const EVAL_BATCH: usize = 500;
/// Training images (the first of the training split, not augmented) whose accuracy is
/// reported as `train_accuracy` at each evaluation.
const TRAIN_PROBE: usize = 2000;

/// `classification`'s own settings and flags (`#[command(flatten)]` beside
/// [`crate::train::TrainArgs`]), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct ClassificationConfig {
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// The data and the ViT.
    #[command(flatten)]
    #[serde(flatten)]
    pub vision: VisionArgs,
    /// Zero padding on each side before the random crop back to the image size (0: no
    /// crop; less than the image sides).
    #[arg(long, default_value_t = 2)]
    pub crop_pad: usize,
    /// Random horizontal flips of training images (`--flip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
}

impl ClassificationConfig {
    /// The flags' defaults on the data in `data`.
    pub fn new(data: PathBuf) -> ClassificationConfig {
        use clap::{Args, FromArgMatches};
        let cmd = ClassificationConfig::augment_args(clap::Command::new("classification"));
        let matches = cmd.get_matches_from(["classification"]);
        let mut cfg = ClassificationConfig::from_arg_matches(&matches).expect("the defaults parse");
        cfg.vision.data = data;
        cfg
    }

    /// The model of this configuration for `train`'s variant, on `height × width` images.
    pub fn vit_config(&self, train: &TrainConfig, height: usize, width: usize) -> VitConfig {
        self.vision
            .vit_config(train, height, width, self.vision.n_classes)
    }

    /// The augmentation of training images.
    pub fn augment(&self) -> Augment {
        Augment {
            pad: self.crop_pad,
            flip: self.flip,
        }
    }
}

/// The `classification` task: the image splits, the model and where the epochs stand.
pub struct Classification {
    cfg: ClassificationConfig,
    train: Images,
    val: Images,
    test: Images,
    model: Vit,
    epochs: Epochs,
}

/// The loss summed over `images` and the predicted class of each, by `model` in eval
/// mode, `EVAL_BATCH` images at a time.
fn predict(model: &Vit, images: &Images, rngs: &mut Rngs) -> Result<(f64, Vec<usize>)> {
    let (mut loss, mut preds) = (0.0, Vec::with_capacity(images.len()));
    let all: Vec<usize> = (0..images.len()).collect();
    for idx in all.chunks(EVAL_BATCH) {
        let (x, y) = images.batch(idx, None);
        let x = Tensor::from_vec(x, &[idx.len(), 1, images.height, images.width])?;
        let logits = no_grad(|| model.forward(&x, &mut rngs.dropout))?;
        loss += logits.cross_entropy(&y, None, Reduction::Sum)?.item()?;
        preds.extend(logits.argmax(1)?);
    }
    Ok((loss, preds))
}

/// The fraction of `preds` equal to `labels` (0 for none).
fn accuracy(preds: &[usize], labels: &[u8]) -> f64 {
    let hits = preds
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == usize::from(**l))
        .count();
    hits as f64 / preds.len().max(1) as f64
}

impl Classification {
    /// The class names: Fashion-MNIST's for 10 classes, numbers otherwise.
    fn class_names(&self) -> Vec<String> {
        if self.cfg.vision.n_classes == FASHION_CLASSES.len() {
            FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..self.cfg.vision.n_classes)
                .map(|c| c.to_string())
                .collect()
        }
    }
}

impl Task for Classification {
    type Config = ClassificationConfig;
    type Model = Vit;
    const NAME: &'static str = "classification";
    const LOSS_UNIT: &'static str = "nats per image";
    const ITEM: &'static str = "img";

    /// Baselines (`pre-ln`, `post-ln`): AdamW lr 1e-3, weight decay 0.05, 200 warmup steps,
    /// cosine decay to 0. σReparam without LayerNorm: SGD with momentum 0.9, lr 0.1, no
    /// warmup, no weight decay (the paper's simplified recipe). σReparam with LayerNorm:
    /// the baselines' AdamW recipe. 9000 steps of 128 images (21 epochs of the 55,000 training images).
    fn defaults(variant: Variant) -> TrainConfig {
        TrainConfig {
            lr: 1e-3,
            weight_decay: 0.05,
            warmup: 200,
            min_lr_ratio: 0.0,
            steps: 9000,
            eval_every: 500,
            checkpoint_every: 500,
            log_every: 20,
            ..TrainConfig::new(variant)
        }
        .simplified_for_sigma_reparam(0.1)
    }

    /// The flags of [`VisionArgs::validate`] and a positive `--batch-size`. The image size
    /// is checked against the patch size and `--crop-pad`, and the attention memory of a
    /// batch against the machine's, when the data is loaded.
    fn validate(cfg: &ClassificationConfig, _train: &TrainConfig) -> Result<()> {
        positive(&[("--batch-size", cfg.batch_size)])?;
        cfg.vision.validate()
    }

    fn load(cfg: &ClassificationConfig, setup: Setup, init: &mut ChaCha8Rng) -> Result<Self> {
        let (Splits { train, val, test }, epochs) = cfg.vision.load(setup, cfg.batch_size, 1)?;
        let (h, w) = (train.height, train.width);
        if cfg.crop_pad >= h.min(w) {
            return Err(Error::Config(format!(
                "--crop-pad {} must be smaller than the image sides ({h}×{w})",
                cfg.crop_pad
            )));
        }
        let model = Vit::new(cfg.vit_config(setup.train, h, w), DType::F32, init)?;
        Ok(Classification {
            cfg: cfg.clone(),
            train,
            val,
            test,
            model,
            epochs,
        })
    }

    fn build_model(
        cfg: &ClassificationConfig,
        train: &TrainConfig,
        state: &Value,
        init: &mut ChaCha8Rng,
    ) -> Result<Vit> {
        let (h, w) = saved_size(state)?;
        Ok(Vit::new(cfg.vit_config(train, h, w), DType::F32, init)?)
    }

    fn model(&self) -> &Vit {
        &self.model
    }

    /// The image size and where the epochs stand (epoch, images of it used).
    fn state(&self) -> Value {
        vision::state(&self.train, &self.epochs)
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "model: {}; batches of {}; augmentation: crop with padding {}, flips {}",
            c.vision.describe(self.model.config()),
            c.batch_size,
            c.crop_pad,
            if c.flip { "on" } else { "off" }
        )
    }

    fn items_per_step(&self) -> usize {
        self.cfg.batch_size
    }

    fn loss(&mut self, rngs: &mut Rngs) -> Result<Tensor> {
        let b = self.cfg.batch_size;
        let augment = self.cfg.augment();
        let idx = self.epochs.next(b);
        let (x, y) = self.train.batch(idx, Some((&augment, &mut rngs.batch)));
        let x = Tensor::from_vec(x, &[b, 1, self.train.height, self.train.width])?;
        let logits = self.model.forward(&x, &mut rngs.dropout)?;
        Ok(self.model.loss(&logits, &y)?)
    }

    /// `val_loss` (nats per image) and `val_accuracy` on the validation split;
    /// `train_accuracy` on the first [`TRAIN_PROBE`] training images, not augmented.
    fn evaluate(&mut self, rngs: &mut Rngs) -> Result<Vec<(&'static str, f64)>> {
        let (loss, preds) = predict(&self.model, &self.val, rngs)?;
        let probe = self.train.subset(TRAIN_PROBE.min(self.train.len()));
        let (_, train_preds) = predict(&self.model, &probe, rngs)?;
        Ok(vec![
            ("val_loss", loss / self.val.len() as f64),
            ("val_accuracy", accuracy(&preds, &self.val.labels)),
            ("train_accuracy", accuracy(&train_preds, &probe.labels)),
        ])
    }

    fn eval_line(metrics: &[(&'static str, f64)]) -> String {
        let get = |k: &str| metrics.iter().find(|m| m.0 == k).map_or(f64::NAN, |m| m.1);
        format!(
            "val {:.4} nats, accuracy {:.2}% (train {:.2}%)",
            get("val_loss"),
            100.0 * get("val_accuracy"),
            100.0 * get("train_accuracy")
        )
    }

    /// Query and key projections per layer (they set the attention logits), the patch
    /// embedding and the head.
    fn plots_sigma_of(name: &str) -> bool {
        name.ends_with("attn.q")
            || name.ends_with("attn.k")
            || name == "head"
            || name == "patch_embed.proj"
    }

    /// The test set, once: `test_loss` (nats per image), `test_accuracy`, and its confusion
    /// matrix printed and saved as `confusion.json` and `confusion.svg`.
    fn finish(
        &mut self,
        out: &Path,
        rng: &mut ChaCha8Rng,
        verbose: bool,
    ) -> Result<Vec<(String, f64)>> {
        self.model.eval();
        self.model.set_record_entropy(false);
        let mut rngs = Rngs {
            batch: rng.clone(),
            dropout: rng.clone(),
        };
        let (loss, preds) = predict(&self.model, &self.test, &mut rngs)?;
        let labels: Vec<usize> = self.test.labels.iter().map(|&l| usize::from(l)).collect();
        let mut confusion = ConfusionMatrix::new(self.cfg.vision.n_classes);
        confusion.add_batch(&labels, &preds)?;
        let names = self.class_names();
        let title = format!(
            "Test confusion matrix: accuracy {:.2}% of {} images",
            100.0 * confusion.accuracy(),
            self.test.len()
        );
        confusion.save(out, &names, &title)?;
        if verbose {
            use std::io::Write;
            let text = format!("test set: {}", confusion.render(&names));
            // The matrix is in confusion.json whatever happens to standard output.
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        Ok(vec![
            ("test_loss".into(), loss / self.test.len().max(1) as f64),
            ("test_accuracy".into(), confusion.accuracy()),
        ])
    }
}
