//! `classification`: train a Vision Transformer on Fashion-MNIST (or any IDX image set),
//! with σReparam variants, attention-entropy diagnostics, checkpoints, plots, and the test
//! accuracy with its confusion matrix at the end.

use clap::Parser;
use tasks::classification::{Classification, ClassificationConfig};
use tasks::train::{parse_cli, run_cli, TrainArgs};

/// Train a ViT on Fashion-MNIST and watch its attention entropy.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    about = "Train a Vision Transformer on Fashion-MNIST (fetched on first use; any directory \
             of IDX files with --data), plain, LayerNorm or σReparam variants, and log its \
             attention entropy. Writes metrics.jsonl, checkpoint.safetensors, summary.json \
             (with the test accuracy), SVG plots and the test confusion matrix to --out.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    classification: ClassificationConfig,
}

fn main() {
    tasks::keep_freed_memory();
    let cli = parse_cli::<Cli, Classification>();
    run_cli::<Classification>(&cli.args.train, cli.args.classification, &cli.given);
}
