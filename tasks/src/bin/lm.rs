//! `lm`: train a character-level transformer language model on real text, with σReparam
//! variants, attention-entropy diagnostics, checkpoints, plots and a generated sample; or
//! generate text from a saved run (`lm sample --from DIR`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tasks::lm::{sample_from, Lm, LmConfig};
use tasks::train::{parse_cli, run_cli, set_threads, TrainArgs};

/// Train a character-level transformer LM (Shakespeare by default) and watch its attention
/// entropy, or sample from a trained one.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true,
    about = "Train a character-level transformer language model (Shakespeare by default; \
             plain, LayerNorm or σReparam variants) and log its attention entropy. Writes \
             metrics.jsonl, checkpoint.safetensors, summary.json, SVG plots and sample.txt \
             to --out. `lm sample --from DIR` generates text from a saved run.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    lm: LmConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from the model of a saved run, without training.
    #[command(allow_negative_numbers = true)]
    Sample {
        /// The --out directory of an lm run (its checkpoint.safetensors).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Text to continue (characters the model was trained on).
        #[arg(long, default_value = "\n")]
        prompt: String,
        /// Characters to generate.
        #[arg(long, default_value_t = 600)]
        chars: usize,
        /// Sampling temperature (finite and > 0).
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Seed of the sampling. The run's own --seed, --temperature and --sample-chars with
        /// the default prompt reproduce its sample.txt (printed after the prompt).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() {
    tasks::keep_freed_memory();
    let cli = parse_cli::<Cli, Lm>();
    match cli.args.command {
        Some(Command::Sample {
            from,
            prompt,
            chars,
            temperature,
            seed,
            threads,
        }) => {
            set_threads(threads);
            match sample_from(&from, &prompt, chars, temperature, seed) {
                Ok(text) => {
                    use std::io::Write;
                    // A closed pipe (`| head`) is not an error of the program.
                    match writeln!(std::io::stdout(), "{prompt}{text}") {
                        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                            eprintln!("error: writing the sample to standard output: {e}");
                            std::process::exit(1);
                        }
                        _ => {}
                    }
                }
                Err(e @ tasks::Error::Config(_)) => tasks::train::fail(e),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => run_cli::<Lm>(&cli.args.train, cli.args.lm, &cli.given),
    }
}
