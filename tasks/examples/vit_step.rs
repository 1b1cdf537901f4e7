//! Time the `classification` training step on the default ViT: forward, then the trainer's
//! own [`tasks::train::optimize`] (backward, gradient clipping, the variant's optimizer,
//! zero_grad) with the trainer's optimizer (attention entropy not recorded), on seeded
//! random normal images and random labels. Prints one JSON line (median ms per step,
//! images/s, peak resident memory) that `scripts/compare-pytorch.sh --task vit` sets beside
//! `scripts/torch_vit_step.py`.
//!
//! `cargo run --release -p tasks --example vit_step -- --variant pre-ln --steps 10 --threads 2`

use clap::Parser;
use engine::{DType, Tensor};
use nn::{ModuleExt, Vit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::time::Instant;
use tasks::classification::{Classification, ClassificationConfig};
use tasks::train::{build_optimizer, Task, Variant};

mod common;
use common::{peak_rss_mib, time_steps};

#[derive(Debug, Parser)]
#[command(
    about = "Time classification (ViT) training steps on random images; prints one JSON line"
)]
struct Args {
    /// Model variant (LayerNorm placement, plain or σReparam linears); its optimizer and
    /// learning rate are the `classification` recipe's.
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
    cls: ClassificationConfig,
    /// Image side in pixels (28: Fashion-MNIST).
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tasks::keep_freed_memory();
    let a = Args::parse();
    if a.steps == 0 {
        return Err("--steps must be positive".into());
    }
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let train = Classification::defaults(a.variant);
    Classification::validate(&a.cls, &train)?;
    let (b, side) = (a.cls.batch_size, a.image_size);
    let model = Vit::new(
        a.cls.vit_config(&train, side, side),
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(a.seed),
    )?;
    model.set_record_entropy(false);
    let params = model.parameters();
    let mut opt = build_optimizer(&train, &model)?;

    let mut data_rng = ChaCha8Rng::seed_from_u64(a.seed + 1);
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(a.seed + 2);
    let n_classes = a.cls.n_classes;
    let timing = time_steps(
        a.warmup_steps,
        a.steps,
        &train,
        &params,
        opt.as_mut(),
        || {
            let x = Tensor::randn(&[b, 1, side, side], 0.0, 1.0, DType::F32, &mut data_rng);
            let y: Vec<usize> = (0..b).map(|_| data_rng.gen_range(0..n_classes)).collect();
            let t0 = Instant::now();
            let logits = model.forward(&x, &mut dropout_rng)?;
            Ok((model.loss(&logits, &y)?, t0))
        },
    )?;
    let c = &a.cls;
    println!(
        "{}",
        json!({
            "impl": "ours",
            "version": env!("CARGO_PKG_VERSION"),
            "variant": a.variant.name(),
            "threads": rayon::current_num_threads(),
            "steps": a.steps,
            "warmup_steps": a.warmup_steps,
            "batch_size": b,
            "image_size": side,
            "patch_size": c.patch_size,
            "d_model": c.d_model,
            "n_layers": c.n_layers,
            "n_heads": c.n_heads,
            "mlp_ratio": c.mlp_ratio,
            "pooling": model.config().pooling,
            "parameters": model.num_parameters(),
            "median_ms": timing.median * 1e3,
            "min_ms": timing.min * 1e3,
            "images_per_s": b as f64 / timing.median,
            "peak_rss_mib": peak_rss_mib(),
            "first_loss": timing.first_loss,
            "last_loss": timing.last_loss,
        })
    );
    Ok(())
}
