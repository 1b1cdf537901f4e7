//! Time the `lm` training step on the default model: forward, then the trainer's own
//! [`tasks::train::optimize`] (backward, gradient clipping, AdamW, zero_grad) with the
//! trainer's optimizer (attention entropy not recorded), on
//! seeded random token batches. Prints one JSON line (median ms per step, tokens/s, peak
//! resident memory) that `scripts/compare-pytorch.sh` sets beside `scripts/torch_lm_step.py`.
//!
//! `cargo run --release -p tasks --example lm_step -- --variant pre-ln --steps 10 --threads 2`

use clap::Parser;
use engine::DType;
use nn::{Gpt, ModuleExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::time::Instant;
use tasks::lm::{Lm, LmConfig};
use tasks::train::{build_optimizer, Task};

mod common;
use common::{time_steps, TimingArgs};

#[derive(Debug, Parser)]
#[command(about = "Time lm training steps on random batches; prints one JSON line")]
struct Args {
    #[command(flatten)]
    run: TimingArgs,
    #[command(flatten)]
    lm: LmConfig,
    /// Vocabulary size (80: the Shakespeare corpus of scripts/fetch-shakespeare.sh).
    #[arg(long, default_value_t = 80)]
    vocab: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    a.run.start()?;
    if [
        a.lm.batch_size,
        a.lm.seq_len,
        a.lm.d_model,
        a.lm.n_heads,
        a.vocab,
    ]
    .contains(&0)
    {
        return Err("sizes must be positive".into());
    }
    let train = Lm::defaults(a.run.variant);
    let model = Gpt::new(
        a.lm.gpt_config(&train, a.vocab),
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(a.run.seed),
    )?;
    model.set_record_entropy(false);
    let params = model.parameters();
    let mut opt = build_optimizer(&train, &model)?;

    let mut data_rng = ChaCha8Rng::seed_from_u64(a.run.seed + 1);
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(a.run.seed + 2);
    let n = a.lm.batch_size * a.lm.seq_len;
    let timing = time_steps(
        a.run.warmup_steps,
        a.run.steps,
        &train,
        &params,
        opt.as_mut(),
        || {
            let ids: Vec<usize> = (0..n).map(|_| data_rng.gen_range(0..a.vocab)).collect();
            let targets: Vec<usize> = (0..n).map(|_| data_rng.gen_range(0..a.vocab)).collect();
            let t0 = Instant::now();
            let loss = model.loss(
                &ids,
                &targets,
                a.lm.batch_size,
                a.lm.seq_len,
                &mut dropout_rng,
            )?;
            Ok((loss, t0))
        },
    )?;
    let extra = json!({
        "batch_size": a.lm.batch_size,
        "seq_len": a.lm.seq_len,
        "d_model": a.lm.d_model,
        "n_layers": a.lm.n_layers,
        "n_heads": a.lm.n_heads,
        "vocab": a.vocab,
        "parameters": model.num_parameters(),
        "tokens_per_s": n as f64 / timing.median,
    });
    println!("{}", a.run.report(&timing, extra));
    Ok(())
}
