//! `lm`: train a character-level transformer language model on real text, with σReparam
//! variants, attention-entropy diagnostics, checkpoints, plots and a generated sample.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use tasks::lm::{run, ModelSize, RunConfig, RunOptions, Variant, DEFAULT_DATA};

/// Train a character-level transformer LM (Shakespeare by default) and watch its attention
/// entropy. Writes metrics.jsonl, checkpoint.safetensors, loss/entropy/σ-γ plots (SVG) and
/// sample.txt to --out.
#[derive(Debug, Parser)]
#[command(
    version,
    allow_negative_numbers = true,
    about = "Train a character-level transformer language model (Shakespeare by default; \
             plain, LayerNorm or σReparam variants) and log its attention entropy. Writes \
             metrics.jsonl, checkpoint.safetensors, summary.json, SVG plots and sample.txt \
             to --out.",
    long_about = None
)]
struct Args {
    /// Model variant: LayerNorm placement and plain or σReparam linear layers.
    #[arg(long, value_enum, default_value = "pre-ln")]
    variant: Variant,
    /// Peak learning rate [default: 1e-3 for pre-ln/post-ln, 1e-2 for sigma-reparam,
    /// 3e-3 for sigma-reparam-pre-ln/-post-ln].
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps [default: 100; 0 for sigma-reparam].
    #[arg(long)]
    warmup: Option<usize>,
    /// Learning-rate multiplier of σReparam's γ [default: 1].
    #[arg(long)]
    gamma_lr_scale: Option<f64>,
    /// Initialize σReparam's γ to 1 instead of σ(W₀).
    #[arg(long)]
    gamma_one: bool,
    /// Training steps.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    #[command(flatten)]
    size: ModelSize,
    /// Dropout probability (embeddings, attention, residual branches).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// AdamW weight decay of weight matrices.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (must be > 0; clipping cannot be turned off).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Standard deviation of token and position embeddings at initialization.
    #[arg(long, default_value_t = 1.0)]
    emb_std: f64,
    /// Factor on every residual branch's output.
    #[arg(long, default_value_t = 1.0)]
    residual_scale: f64,
    /// Seed of initialization, batch order, dropout and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// UTF-8 text to train on (the last 10% validates). The default is fetched
    /// automatically with scripts/fetch-shakespeare.sh when missing.
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Output directory [default: runs/lm-<variant>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in DIR with its saved configuration. Only --threads, --quiet,
    /// --stop-after and --no-fetch may be given with it; any other flag is an error. A run
    /// already at its last step is left as it is.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Characters of text to generate at the end.
    #[arg(long, default_value_t = 600)]
    sample_chars: usize,
    /// Sampling temperature (finite and > 0).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Worker threads, 1 to 1024 [default, or 0: all cores]. Results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Steps between metrics records (step 1 and the last step are always logged).
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Steps between validation losses.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 10)]
    eval_batches: usize,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Stop after this many steps (with a checkpoint), as if interrupted; --resume continues.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Never run the fetch script; stop with the command to run instead.
    #[arg(long)]
    no_fetch: bool,
    /// Print nothing but errors (no progress bar, no sample); files are written as usual.
    #[arg(long)]
    quiet: bool,
}

/// Flags that may accompany --resume (the run's own configuration is restored from its
/// checkpoint; these only change how this process runs).
const RESUME_FLAGS: [&str; 5] = ["resume", "threads", "quiet", "stop_after", "no_fetch"];

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

fn main() {
    tasks::keep_freed_memory();
    let command = Args::command();
    let flags: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    let matches = command.get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if args.resume.is_some() {
        let given: Vec<String> = flags
            .iter()
            .map(String::as_str)
            .filter(|id| !RESUME_FLAGS.contains(id))
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !given.is_empty() {
            fail(format!(
                "--resume continues with the configuration saved in the checkpoint; {} cannot \
                 be given with it (allowed: --threads, --quiet, --stop-after, --no-fetch)",
                given.join(", ")
            ));
        }
    }
    if let Some(n) = args.threads {
        if n > 1024 {
            fail(format!(
                "--threads {n} is more than 1024; use at most the number of cores (0 = all cores)"
            ));
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            fail(format!("cannot start {n} threads: {e}"));
        }
    }
    let base = RunConfig::defaults(args.variant, args.data);
    let cfg = args.size.apply(RunConfig {
        lr: args.lr.unwrap_or(base.lr),
        warmup: args.warmup.unwrap_or(base.warmup),
        gamma_lr_scale: args.gamma_lr_scale.unwrap_or(base.gamma_lr_scale),
        gamma_one: args.gamma_one,
        weight_decay: args.weight_decay,
        grad_clip: args.grad_clip,
        steps: args.steps,
        dropout: args.dropout,
        emb_std: args.emb_std,
        residual_scale: args.residual_scale,
        seed: args.seed,
        log_every: args.log_every,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        checkpoint_every: args.checkpoint_every,
        sample_chars: args.sample_chars,
        temperature: args.temperature,
        ..base
    });
    let variant_name = clap::ValueEnum::to_possible_value(&args.variant)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let opts = RunOptions {
        out: args
            .resume
            .clone()
            .or(args.out)
            .unwrap_or_else(|| PathBuf::from(format!("runs/lm-{variant_name}"))),
        resume: args.resume.is_some(),
        stop_after: args.stop_after,
        verbose: !args.quiet,
        plots: true,
        fetch: !args.no_fetch,
    };
    match run(Some(cfg), &opts) {
        Ok(_) => {}
        Err(e @ tasks::Error::Config(_)) => fail(e),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
