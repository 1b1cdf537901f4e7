//! Time the `lm` training step on the default model: forward, backward, gradient clipping,
//! AdamW and zero_grad, exactly as `tasks::lm` runs them (attention entropy not recorded), on
//! seeded random token batches. Prints one JSON line (median ms per step, tokens/s, peak
//! resident memory) that `scripts/compare-pytorch.sh` sets beside `scripts/torch_lm_step.py`.
//!
//! `cargo run --release -p tasks --example lm_step -- --variant pre-ln --steps 10 --threads 2`

use clap::Parser;
use engine::DType;
use nn::{clip_grad_norm, Gpt, ModuleExt, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use tasks::lm::{ModelSize, RunConfig, Variant};

#[derive(Debug, Parser)]
#[command(about = "Time lm training steps on random batches; prints one JSON line")]
struct Args {
    /// Model variant (LayerNorm placement, plain or σReparam linears); its learning rate is
    /// the `lm` recipe's.
    #[arg(long, value_enum, default_value = "pre-ln")]
    variant: Variant,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    warmup_steps: usize,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    size: ModelSize,
    /// Vocabulary size (80: the Shakespeare corpus of scripts/fetch-shakespeare.sh).
    #[arg(long, default_value_t = 80)]
    vocab: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tasks::keep_freed_memory();
    let a = Args::parse();
    if [
        a.steps,
        a.size.batch_size,
        a.size.seq_len,
        a.size.d_model,
        a.size.n_heads,
        a.vocab,
    ]
    .contains(&0)
    {
        return Err("sizes and --steps must be positive".into());
    }
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let cfg = a.size.apply(RunConfig {
        seed: a.seed,
        ..RunConfig::defaults(a.variant, PathBuf::new())
    });
    let model = Gpt::new(
        cfg.gpt_config(a.vocab),
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(a.seed),
    )?;
    model.set_record_entropy(false);
    let params = model.parameters();
    let mut opt = cfg.optimizer(&model)?;

    let mut data_rng = ChaCha8Rng::seed_from_u64(a.seed + 1);
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(a.seed + 2);
    let n = a.size.batch_size * a.size.seq_len;
    let mut times = Vec::with_capacity(a.steps);
    let mut losses = Vec::with_capacity(a.warmup_steps + a.steps);
    for step in 0..a.warmup_steps + a.steps {
        let ids: Vec<usize> = (0..n).map(|_| data_rng.gen_range(0..a.vocab)).collect();
        let targets: Vec<usize> = (0..n).map(|_| data_rng.gen_range(0..a.vocab)).collect();
        let t0 = Instant::now();
        let loss = model.loss(
            &ids,
            &targets,
            a.size.batch_size,
            a.size.seq_len,
            &mut dropout_rng,
        )?;
        losses.push(loss.item()?);
        loss.backward()?;
        clip_grad_norm(&params, 1.0)?;
        opt.step()?;
        opt.zero_grad();
        if step >= a.warmup_steps {
            times.push(t0.elapsed().as_secs_f64());
        }
    }

    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    let median = if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2.0
    };
    let variant = clap::ValueEnum::to_possible_value(&a.variant)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    println!(
        "{}",
        json!({
            "impl": "ours",
            "version": env!("CARGO_PKG_VERSION"),
            "variant": variant,
            "threads": rayon::current_num_threads(),
            "steps": a.steps,
            "warmup_steps": a.warmup_steps,
            "batch_size": a.size.batch_size,
            "seq_len": a.size.seq_len,
            "d_model": a.size.d_model,
            "n_layers": a.size.n_layers,
            "n_heads": a.size.n_heads,
            "vocab": a.vocab,
            "parameters": model.num_parameters(),
            "median_ms": median * 1e3,
            "min_ms": times[0] * 1e3,
            "tokens_per_s": n as f64 / median,
            "peak_rss_mib": peak_rss_mib(),
            "first_loss": losses[0],
            "last_loss": losses[losses.len() - 1],
        })
    );
    Ok(())
}
