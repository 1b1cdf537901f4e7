//! `ssl`: pretrain a ViT encoder on Fashion-MNIST (or any IDX image set) by SimCLR without
//! the labels, with σReparam variants and attention-entropy diagnostics, then report a
//! linear probe's test accuracy on its frozen features beside raw pixels and the untrained
//! encoder; or probe a saved run's encoder again (`ssl probe --from DIR`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tasks::ssl::{probe_run, ProbeArgs, Ssl, SslConfig};
use tasks::train::{parse_cli, run_cli, set_threads, TrainArgs};

/// Pretrain a ViT by SimCLR and probe it linearly.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true,
    about = "Pretrain a Vision Transformer on Fashion-MNIST images without their labels by \
             SimCLR (fetched on first use; any directory of IDX files with --data), plain, \
             LayerNorm or σReparam variants, logging attention entropy; then train a linear \
             probe on the frozen features and compare it with probes on raw pixels and on \
             the untrained encoder. Writes metrics.jsonl, checkpoint.safetensors, \
             summary.json (with the probe accuracies) and SVG plots to --out. \
             `ssl probe --from DIR` probes a saved run's encoder again.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    ssl: SslConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train linear probes on the frozen encoder of a saved run (and its controls) and
    /// print their accuracies as one JSON object, without training the encoder.
    #[command(allow_negative_numbers = true)]
    Probe {
        /// The --out directory of an ssl run (its checkpoint.safetensors).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[command(flatten)]
        probe: ProbeArgs,
        /// Also probe raw pixels and the untrained encoder.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        controls: bool,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() {
    tasks::keep_freed_memory();
    let cli = parse_cli::<Cli, Ssl>();
    match cli.args.command {
        Some(Command::Probe {
            from,
            probe,
            controls,
            threads,
        }) => {
            set_threads(threads);
            match probe_run(&from, probe, controls, true) {
                Ok(metrics) => {
                    let map: serde_json::Map<String, serde_json::Value> =
                        metrics.into_iter().map(|(k, v)| (k, v.into())).collect();
                    println!("{}", serde_json::Value::Object(map));
                }
                Err(e @ tasks::Error::Config(_)) => tasks::train::fail(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => run_cli::<Ssl>(&cli.args.train, cli.args.ssl, &cli.given),
    }
}
