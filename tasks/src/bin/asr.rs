//! `asr`: train a CTC speech recognizer (convolutional front-end + transformer) on synthetic
//! and real English speech built from Debian packages (or any directory of WAV files with a
//! manifest), with σReparam variants, attention-entropy diagnostics, checkpoints, plots,
//! and character/word error rates per test group at the end.

use clap::Parser;
use tasks::asr::{Asr, AsrArgs};
use tasks::train::{parse_cli, run_cli, TrainArgs};

/// Train a speech recognizer with CTC and watch its attention entropy.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    about = "Train a CTC speech recognizer (conv1d + GLU front-end, transformer) on speech \
             built on first use from Debian packages (any directory with manifest.tsv and WAV \
             files with --data), plain, LayerNorm or σReparam variants, and log its attention \
             entropy. Writes metrics.jsonl, checkpoint.safetensors, summary.json (with test \
             CER and WER per group) and SVG plots to --out.",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    asr: AsrArgs,
}

fn main() {
    tasks::keep_freed_memory();
    let cli = parse_cli::<Cli, Asr>();
    run_cli::<Asr>(&cli.args.train, cli.args.asr, &cli.given);
}
