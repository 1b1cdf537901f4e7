//! What the image programs (`classification`, `ssl`) share: the data and ViT flags
//! ([`VisionArgs`]), loading the IDX splits with their checks (validation split, patch size,
//! attention memory, the resumed epoch position), and the task state saved beside the
//! weights.

use crate::fetch::Fetchable;
use crate::images::{load_dir, Epochs, Images};
use crate::train::{
    check_memory, check_transformer, positive, product, seeded, Setup, TrainConfig,
};
use crate::{Error, Result};
use nn::{Pooling, VitConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The default data directory, created by `scripts/fetch-fashion-mnist.sh`.
pub const DEFAULT_DATA: &str = "data/fashion-mnist";

/// Fashion-MNIST, fetched from Debian on first use.
const FASHION_MNIST: Fetchable = Fetchable {
    default: DEFAULT_DATA,
    script: "fetch-fashion-mnist.sh",
    instead: "a directory holding the four IDX files (train-images-idx3-ubyte[.gz], …)",
};

/// Seed of the validation split: the same held-out images whatever `--seed`, so that runs
/// of different seeds and recipes are compared on the same images.
const SPLIT_SEED: u64 = 0;

fn parse_pooling(s: &str) -> std::result::Result<Pooling, String> {
    match s {
        "cls" => Ok(Pooling::Cls),
        "mean" => Ok(Pooling::Mean),
        _ => Err(format!("expected `cls` or `mean`, got `{s}`")),
    }
}

/// The data and ViT-encoder flags of the image programs (`#[command(flatten)]` and
/// `#[serde(flatten)]` inside each program's settings, so checkpoints keep one flat map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct VisionArgs {
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

/// The three splits of an image set: training, validation (held out of the training
/// file with a fixed seed) and test.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Images trained on.
    pub train: Images,
    /// Images held out for model selection.
    pub val: Images,
    /// The test file's images, for the reported figures only.
    pub test: Images,
}

impl VisionArgs {
    /// The encoder of these flags for `train`'s variant on `height × width` images, with a
    /// head of `n_classes` outputs (0: no head).
    pub fn vit_config(
        &self,
        train: &TrainConfig,
        height: usize,
        width: usize,
        n_classes: usize,
    ) -> VitConfig {
        let (norm, sigma_reparam) = train.variant.layout();
        VitConfig {
            height,
            width,
            channels: 1,
            patch_size: self.patch_size,
            n_classes,
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

    /// Positive sizes, `--dropout` in [0, 1), `--n-heads` dividing `--d-model`, and
    /// `--n-classes` in 2..=256 (labels are bytes).
    pub fn validate(&self) -> Result<()> {
        positive(&[
            ("--patch-size", self.patch_size),
            ("--d-model", self.d_model),
            ("--n-layers", self.n_layers),
            ("--n-heads", self.n_heads),
            ("--mlp-ratio", self.mlp_ratio),
            ("--val-images", self.val_images),
        ])?;
        check_transformer(self.d_model, self.n_heads, self.dropout)?;
        if !(2..=256).contains(&self.n_classes) {
            return Err(Error::Config(format!(
                "--n-classes must be in 2..=256 (labels are bytes), got {}",
                self.n_classes
            )));
        }
        Ok(())
    }

    /// Load the splits (fetching the default data when allowed) and where the epochs
    /// stand, refusing: a validation split that leaves nothing to train on, a
    /// `--train-images` beyond the training split, fewer training images than
    /// `batch_size`, a patch size that does not divide the images, attention matrices of
    /// `views × batch_size` images beyond the machine's memory, and a resumed run's
    /// checkpoint made on images of another size or position.
    pub fn load(&self, setup: Setup, batch_size: usize, views: usize) -> Result<(Splits, Epochs)> {
        FASHION_MNIST.ensure(&self.data, setup.fetch, setup.verbose)?;
        let (all_train, test) = load_dir(&self.data, self.n_classes)?;
        let (mut train, val) = all_train
            .split(self.val_images, &mut seeded(SPLIT_SEED, 1))
            .map_err(|e| Error::Config(format!("--val-images {}: {e}", self.val_images)))?;
        if self.train_images > 0 {
            if self.train_images > train.len() {
                return Err(Error::Config(format!(
                    "--train-images {} exceeds the {} images of the training split",
                    self.train_images,
                    train.len()
                )));
            }
            train = train.subset(self.train_images);
        }
        if train.len() < batch_size {
            return Err(Error::Config(format!(
                "--batch-size {batch_size} exceeds the {} training images",
                train.len()
            )));
        }
        let (h, w) = (train.height, train.width);
        if !(h.is_multiple_of(self.patch_size) && w.is_multiple_of(self.patch_size)) {
            return Err(Error::Config(format!(
                "--patch-size {} must divide the image height and width ({h}×{w})",
                self.patch_size
            )));
        }
        let tokens = self.vit_config(setup.train, h, w, 0).n_tokens();
        let what = |need: &str| {
            format!(
                "--batch-size {batch_size} needs about {need} for the attention matrices alone \
                 ({} layers × {} heads × {tokens}² tokens × 4 bytes × {views} view(s) per image)",
                self.n_layers, self.n_heads
            )
        };
        let bytes = product(&[
            self.n_layers,
            views,
            batch_size,
            self.n_heads,
            tokens,
            tokens,
            4,
        ]);
        check_memory(bytes, what, "lower --batch-size or raise --patch-size")?;
        let (epoch, pos) = match setup.saved {
            Some(saved) => {
                if saved_size(saved)? != (h, w) {
                    return Err(Error::Data(format!(
                        "the images of {} are {h}×{w}, the checkpoint's model was trained on \
                         {:?}; resume with the same data",
                        self.data.display(),
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
                "data: {} ({} training, {} validation, {} test images of {h}×{w}, {} classes)",
                self.data.display(),
                train.len(),
                val.len(),
                test.len(),
                self.n_classes
            );
        }
        let epochs = Epochs::at(setup.train.seed, train.len(), epoch, pos);
        Ok((Splits { train, val, test }, epochs))
    }

    /// The encoder in words, for the log line: `ViT, 7×7 patches (16 tokens), d_model 128,
    /// 4 layers, 4 heads, MLP ×2, mean pooling`.
    pub fn describe(&self, vit: &VitConfig) -> String {
        format!(
            "ViT, {p}×{p} patches ({} tokens), d_model {}, {} layers, {} heads, MLP ×{}, {} \
             pooling",
            vit.n_tokens(),
            self.d_model,
            self.n_layers,
            self.n_heads,
            self.mlp_ratio,
            if self.pooling == Pooling::Cls {
                "class-token"
            } else {
                "mean"
            },
            p = self.patch_size,
        )
    }
}

/// The task state of an image run: the image size and where the epochs stand.
pub fn state(train: &Images, epochs: &Epochs) -> Value {
    json!({
        "height": train.height,
        "width": train.width,
        "epoch": epochs.epoch,
        "pos": epochs.pos,
    })
}

/// The image size saved by [`state`] (height, width).
pub fn saved_size(state: &Value) -> Result<(usize, usize)> {
    let side = |k: &str| {
        state[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::Data(format!("checkpoint has no image {k}")))
    };
    Ok((side("height")?, side("width")?))
}
