//! `ssl`: pretrain a ViT encoder on Fashion-MNIST (or any IDX image set) by SimCLR without
//! the labels, with σReparam variants and attention-entropy diagnostics, then report a
//! linear probe's test accuracy on its frozen features beside raw pixels and the untrained
//! encoder.

use clap::Parser;
use tasks::ssl::{Ssl, SslConfig};
use tasks::train::{parse_cli, run_cli, TrainArgs};

/// Pretrain a ViT by SimCLR and probe it linearly.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    about = "Pretrain a Vision Transformer on Fashion-MNIST images without their labels by \
             SimCLR (fetched on first use; any directory of IDX files with --data), plain, \
             LayerNorm or σReparam variants, logging attention entropy; then train a linear \
             probe on the frozen features and compare it with probes on raw pixels and on \
             the untrained encoder. Writes metrics.jsonl, checkpoint.safetensors, \
             summary.json (with the probe accuracies) and SVG plots to --out.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    ssl: SslConfig,
}

fn main() {
    tasks::keep_freed_memory();
    let cli = parse_cli::<Cli, Ssl>();
    run_cli::<Ssl>(&cli.args.train, cli.args.ssl, &cli.given);
}
