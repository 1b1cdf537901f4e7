//! The `classification` task: a Vision Transformer trained on Fashion-MNIST (or any set of
//! IDX image files), on the shared harness ([`crate::train`]), with a held-out validation
//! split for model selection and the test set evaluated once at the end (accuracy and a
//! confusion matrix).

use crate::confusion::ConfusionMatrix;
use crate::fetch::Fetchable;
use crate::images::{load_dir, Augment, Images, FASHION_CLASSES};
use crate::train::{
    check_memory, check_transformer, positive, product, seeded, Rngs, Setup, Task, TrainConfig,
    Variant,
};
use crate::{Error, Result};
use engine::{no_grad, DType, Reduction, Tensor};
use nn::{ModuleExt, Pooling, Vit, VitConfig};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The default data directory, created by `scripts/fetch-fashion-mnist.sh`.
pub const DEFAULT_DATA: &str = "data/fashion-mnist";

/// Fashion-MNIST, fetched from Debian on first use.
const FASHION_MNIST: Fetchable = Fetchable {
    default: DEFAULT_DATA,
    script: "fetch-fashion-mnist.sh",
    instead: "a directory holding the four IDX files (train-images-idx3-ubyte[.gz], …)",
};

/// Images per forward pass when evaluating (no graph is kept).
const EVAL_BATCH: usize = 500;
/// Training images (the first of the training split, not augmented) whose accuracy is
/// reported as `train_accuracy` at each evaluation.
const TRAIN_PROBE: usize = 2000;
/// Seed of the validation split: the same held-out images whatever `--seed`, so that runs
/// of different seeds and recipes are compared on the same images.
const SPLIT_SEED: u64 = 0;
/// ChaCha stream of the seed from which epoch `e`'s order is drawn: `EPOCH_STREAM + e`
/// (streams 0–3 are [`seeded`]'s).
const EPOCH_STREAM: u64 = 1 << 32;

fn parse_pooling(s: &str) -> std::result::Result<Pooling, String> {
    match s {
        "cls" => Ok(Pooling::Cls),
        "mean" => Ok(Pooling::Mean),
        _ => Err(format!("expected `cls` or `mean`, got `{s}`")),
    }
}

/// `classification`'s own settings and flags (`#[command(flatten)]` beside
/// [`crate::train::TrainArgs`]), saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct ClassificationConfig {
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Side of the square patches (must divide the image height and width).
    #[arg(long, default_value_t = 7)]
    pub patch_size: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Number of transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layers: usize,
    /// Attention heads per block (must divide --d-model).
    #[arg(long, default_value_t = 4)]
    pub n_heads: usize,
    /// Hidden width of each MLP in units of --d-model.
    #[arg(long, default_value_t = 2)]
    pub mlp_ratio: usize,
    /// Dropout probability (attention and residual branches).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// How the encoder's output becomes one vector per image: `mean` over the patches
    /// (global average pooling) or a `cls` token.
    #[arg(long, default_value = "mean", value_parser = parse_pooling)]
    pub pooling: Pooling,
    /// Zero padding on each side before the random crop back to the image size (0: no
    /// crop; less than the image sides).
    #[arg(long, default_value_t = 2)]
    pub crop_pad: usize,
    /// Random horizontal flips of training images (`--flip false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
    /// Directory of the four IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or `.gz`). The default
    /// is fetched automatically with scripts/fetch-fashion-mnist.sh when missing.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: PathBuf,
    /// Number of classes; every label must be below it.
    #[arg(long, default_value_t = 10)]
    pub n_classes: usize,
    /// Training images held out for validation (model selection); the test set is only
    /// used for the accuracy reported at the end.
    #[arg(long, default_value_t = 5000)]
    pub val_images: usize,
    /// Train on the first N images of the training split only (0: all of them).
    #[arg(long, default_value_t = 0)]
    pub train_images: usize,
}

impl ClassificationConfig {
    /// The flags' defaults on the data in `data`.
    pub fn new(data: PathBuf) -> ClassificationConfig {
        use clap::{Args, FromArgMatches};
        let cmd = ClassificationConfig::augment_args(clap::Command::new("classification"));
        let matches = cmd.get_matches_from(["classification"]);
        ClassificationConfig {
            data,
            ..ClassificationConfig::from_arg_matches(&matches).expect("the defaults parse")
        }
    }

    /// The model of this configuration for `train`'s variant, on `height × width` images.
    pub fn vit_config(&self, train: &TrainConfig, height: usize, width: usize) -> VitConfig {
        let (norm, sigma_reparam) = train.variant.layout();
        VitConfig {
            height,
            width,
            channels: 1,
            patch_size: self.patch_size,
            n_classes: self.n_classes,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            dropout: self.dropout,
            norm,
            sigma_reparam,
            gamma_one: train.gamma_one,
            pooling: self.pooling,
            pos_std: 0.02,
        }
    }

    /// The augmentation of training images.
    pub fn augment(&self) -> Augment {
        Augment {
            pad: self.crop_pad,
            flip: self.flip,
        }
    }
}

/// The image size saved in a run's task state.
fn saved_size(state: &Value) -> Result<(usize, usize)> {
    let side = |k: &str| {
        state[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::Data(format!("checkpoint has no image {k}")))
    };
    Ok((side("height")?, side("width")?))
}

/// Where the training batches stand: epoch `epoch`'s order, of which `pos` images are used.
#[derive(Debug, Clone)]
struct Epochs {
    seed: u64,
    epoch: u64,
    pos: usize,
    order: Vec<usize>,
}

impl Epochs {
    /// Epoch `epoch` of `n` images, `pos` of them used.
    fn at(seed: u64, n: usize, epoch: u64, pos: usize) -> Epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut seeded(seed, EPOCH_STREAM + epoch));
        Epochs {
            seed,
            epoch,
            pos,
            order,
        }
    }

    /// The next `b` indices; an epoch's last images that do not fill a batch are skipped
    /// (PyTorch's `drop_last`), then the next epoch's order is drawn.
    fn next(&mut self, b: usize) -> &[usize] {
        if self.pos + b > self.order.len() {
            *self = Epochs::at(self.seed, self.order.len(), self.epoch + 1, 0);
        }
        self.pos += b;
        &self.order[self.pos - b..self.pos]
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
        if self.cfg.n_classes == FASHION_CLASSES.len() {
            FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..self.cfg.n_classes).map(|c| c.to_string()).collect()
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

    /// Positive sizes, `--dropout` in [0, 1), `--n-heads` dividing `--d-model`,
    /// and `--n-classes` in 2..=256 (labels are bytes). The image size is checked against
    /// the patch size, and the attention memory of a batch against the machine's, when the
    /// data is loaded.
    fn validate(cfg: &ClassificationConfig, _train: &TrainConfig) -> Result<()> {
        positive(&[
            ("--batch-size", cfg.batch_size),
            ("--patch-size", cfg.patch_size),
            ("--d-model", cfg.d_model),
            ("--n-layers", cfg.n_layers),
            ("--n-heads", cfg.n_heads),
            ("--mlp-ratio", cfg.mlp_ratio),
            ("--val-images", cfg.val_images),
        ])?;
        check_transformer(cfg.d_model, cfg.n_heads, cfg.dropout)?;
        if !(2..=256).contains(&cfg.n_classes) {
            return Err(Error::Config(format!(
                "--n-classes must be in 2..=256 (labels are bytes), got {}",
                cfg.n_classes
            )));
        }
        Ok(())
    }

    fn load(cfg: &ClassificationConfig, setup: Setup, init: &mut ChaCha8Rng) -> Result<Self> {
        FASHION_MNIST.ensure(&cfg.data, setup.fetch, setup.verbose)?;
        let (all_train, test) = load_dir(&cfg.data, cfg.n_classes)?;
        let (mut train, val) = all_train
            .split(cfg.val_images, &mut seeded(SPLIT_SEED, 1))
            .map_err(|e| Error::Config(format!("--val-images {}: {e}", cfg.val_images)))?;
        if cfg.train_images > 0 {
            if cfg.train_images > train.len() {
                return Err(Error::Config(format!(
                    "--train-images {} exceeds the {} images of the training split",
                    cfg.train_images,
                    train.len()
                )));
            }
            train = train.subset(cfg.train_images);
        }
        if train.len() < cfg.batch_size {
            return Err(Error::Config(format!(
                "--batch-size {} exceeds the {} training images",
                cfg.batch_size,
                train.len()
            )));
        }
        let (h, w) = (train.height, train.width);
        if !(h.is_multiple_of(cfg.patch_size) && w.is_multiple_of(cfg.patch_size)) {
            return Err(Error::Config(format!(
                "--patch-size {} must divide the image height and width ({h}×{w})",
                cfg.patch_size
            )));
        }
        if cfg.crop_pad >= h.min(w) {
            return Err(Error::Config(format!(
                "--crop-pad {} must be smaller than the image sides ({h}×{w})",
                cfg.crop_pad
            )));
        }
        let vit = cfg.vit_config(setup.train, h, w);
        let what = |need: &str| {
            format!(
                "--batch-size {} needs about {need} for the attention matrices alone ({} \
                 layers × {} heads × {}² tokens × 4 bytes per image)",
                cfg.batch_size,
                cfg.n_layers,
                cfg.n_heads,
                vit.n_tokens()
            )
        };
        let tokens = vit.n_tokens();
        let bytes = product(&[cfg.n_layers, cfg.batch_size, cfg.n_heads, tokens, tokens, 4]);
        check_memory(bytes, what, "lower --batch-size or raise --patch-size")?;
        let (epoch, pos) = match setup.saved {
            Some(saved) => {
                if saved_size(saved)? != (train.height, train.width) {
                    return Err(Error::Data(format!(
                        "the images of {} are {}×{}, the checkpoint's model was trained on \
                         {:?}; resume with the same data",
                        cfg.data.display(),
                        train.height,
                        train.width,
                        saved_size(saved)?
                    )));
                }
                let field = |k: &str| {
                    saved[k]
                        .as_u64()
                        .ok_or_else(|| Error::Data(format!("checkpoint has no epoch {k}")))
                };
                (field("epoch")?, field("pos")? as usize)
            }
            None => (0, 0),
        };
        if pos > train.len() {
            return Err(Error::Data(format!(
                "the checkpoint is {pos} images into an epoch of {}; resume with the same data",
                train.len()
            )));
        }
        if setup.verbose {
            eprintln!(
                "data: {} ({} training, {} validation, {} test images of {}×{}, {} classes)",
                cfg.data.display(),
                train.len(),
                val.len(),
                test.len(),
                train.height,
                train.width,
                cfg.n_classes
            );
        }
        let model = Vit::new(vit, DType::F32, init)?;
        let epochs = Epochs::at(setup.train.seed, train.len(), epoch, pos);
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
        json!({
            "height": self.train.height,
            "width": self.train.width,
            "epoch": self.epochs.epoch,
            "pos": self.epochs.pos,
        })
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        let v = self.model.config();
        format!(
            "model: ViT, {}×{} patches ({} tokens), d_model {}, {} layers, {} heads, MLP ×{}, \
             {} pooling; batches of {}; augmentation: crop with padding {}, flips {}",
            c.patch_size,
            c.patch_size,
            v.n_tokens(),
            c.d_model,
            c.n_layers,
            c.n_heads,
            c.mlp_ratio,
            if c.pooling == Pooling::Cls {
                "class-token"
            } else {
                "mean"
            },
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
        let mut confusion = ConfusionMatrix::new(self.cfg.n_classes);
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
