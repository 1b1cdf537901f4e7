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
use tasks::train::{build_optimizer, Task};

mod common;
use common::{time_steps, TimingArgs};

#[derive(Debug, Parser)]
#[command(
    about = "Time classification (ViT) training steps on random images; prints one JSON line"
)]
struct Args {
    #[command(flatten)]
    run: TimingArgs,
    #[command(flatten)]
    cls: ClassificationConfig,
    /// Image side in pixels (28: Fashion-MNIST).
    #[arg(long, default_value_t = 28)]
    image_size: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    a.run.start()?;
    let train = Classification::defaults(a.run.variant);
    Classification::validate(&a.cls, &train)?;
    let (b, side) = (a.cls.batch_size, a.image_size);
    let model = Vit::new(
        a.cls.vit_config(&train, side, side),
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(a.run.seed),
    )?;
    model.set_record_entropy(false);
    let params = model.parameters();
    let mut opt = build_optimizer(&train, &model)?;

    let mut data_rng = ChaCha8Rng::seed_from_u64(a.run.seed + 1);
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(a.run.seed + 2);
    let n_classes = a.cls.vision.n_classes;
    let timing = time_steps(
        a.run.warmup_steps,
        a.run.steps,
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
    let c = &a.cls.vision;
    let extra = json!({
        "batch_size": b,
        "image_size": side,
        "patch_size": c.patch_size,
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "mlp_ratio": c.mlp_ratio,
        "pooling": model.config().pooling,
        "parameters": model.num_parameters(),
        "images_per_s": b as f64 / timing.median,
    });
    println!("{}", a.run.report(&timing, extra));
    Ok(())
}
