//! The `lm` training step of the default model (d_model 256, 4 layers, 4 heads, batch
//! 16 × 128, vocabulary 80, f32) and the ops that dominate it, each split where it helps into
//! forward only (no graph recorded, under `engine::no_grad`), forward recording the graph,
//! backward alone, and forward + backward:
//!
//! - `lm_step/{pre-ln,sigma-reparam}/…`: the model's loss, then the full step (forward,
//!   backward, gradient clipping, AdamW, zero_grad) through the trainer's own
//!   `tasks::train::optimize`;
//! - `causal_attention/{composed,fused}/…`: `softmax(q kᵀ/√d + mask) v` for q, k, v
//!   `[16, 4, 128, 64]`, from separate ops and as `scaled_dot_product_attention`;
//! - `layer_norm/…` over `[2048, 256]` with weight and bias;
//! - `softmax/…` over the last dim of `[16, 4, 128, 128]`;
//! - `cross_entropy/…`: mean loss of logits `[2048, 80]`.
//!
//! `cargo bench --bench lm_step -- --warm-up-time 1 --measurement-time 10`
//! (`RAYON_NUM_THREADS=1` for one thread; `-- --test` runs each once).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use engine::{no_grad, DType, Reduction, Tensor};
use nn::{Gpt, ModuleExt, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use tasks::lm::{Lm, LmConfig};
use tasks::train::{build_optimizer, optimize, StepOutcome, Task, TrainConfig, Variant};

const BATCH: usize = 16;
const SEQ: usize = 128;
const VOCAB: usize = 80;

/// The default `lm` model of a variant (entropy recording off) with the trainer's optimizer
/// and `lm`'s recipe.
fn model_and_optimizer(variant: Variant) -> (Gpt, Box<dyn Optimizer>, TrainConfig) {
    let train = Lm::defaults(variant);
    let cfg = LmConfig::new(PathBuf::new());
    let model = Gpt::new(
        cfg.gpt_config(&train, VOCAB),
        DType::F32,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    model.set_record_entropy(false);
    let opt = build_optimizer(&train, &model).unwrap();
    (model, opt, train)
}

fn lm_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("lm_step");
    group.sample_size(10);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ids: Vec<usize> = (0..BATCH * SEQ).map(|_| rng.gen_range(0..VOCAB)).collect();
    let targets: Vec<usize> = (0..BATCH * SEQ).map(|_| rng.gen_range(0..VOCAB)).collect();
    for (name, variant) in [
        ("pre-ln", Variant::PreLn),
        ("sigma-reparam", Variant::SigmaReparam),
    ] {
        let (model, mut opt, train) = model_and_optimizer(variant);
        let params: Vec<Tensor> = model.parameters();
        let loss = |rng: &mut ChaCha8Rng| model.loss(&ids, &targets, BATCH, SEQ, rng).unwrap();
        group.bench_function(format!("{name}/forward_no_grad"), |b| {
            b.iter(|| no_grad(|| loss(&mut rng)))
        });
        group.bench_function(format!("{name}/forward"), |b| b.iter(|| loss(&mut rng)));
        group.bench_function(format!("{name}/backward"), |b| {
            b.iter_batched(
                || {
                    opt.zero_grad();
                    loss(&mut rng)
                },
                |l| l.backward().unwrap(),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("{name}/train_step"), |b| {
            b.iter(|| {
                let l = loss(&mut rng);
                let step = optimize(&l, &params, opt.as_mut(), train.grad_clip, train.max_loss);
                assert!(matches!(step.unwrap(), StepOutcome::Updated { .. }));
            })
        });
    }
    group.finish();
}

/// Benchmarks `f` of `inputs` (leaves that require grad) reduced to a scalar by `sum_all`:
/// forward without a graph, forward with one, backward alone, and forward + backward.
fn fwd_bwd(c: &mut Criterion, name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let mut group = c.benchmark_group(name);
    let zero = || inputs.iter().for_each(Tensor::zero_grad);
    group.bench_function("forward_no_grad", |b| b.iter(|| no_grad(|| f(inputs))));
    group.bench_function("forward", |b| b.iter(|| f(inputs)));
    group.bench_function("backward", |b| {
        b.iter_batched(
            || {
                zero();
                f(inputs).sum_all().unwrap()
            },
            |s| s.backward().unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            zero();
            f(inputs).sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

fn leaf(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F32, rng)
        .requires_grad_(true)
        .unwrap()
}

fn ops(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (h, dh) = (4, 64);
    let qkv: Vec<Tensor> = (0..3)
        .map(|_| leaf(&[BATCH, h, SEQ, dh], &mut rng))
        .collect();
    let mask_values: Vec<f32> = (0..SEQ * SEQ)
        .map(|i| {
            if i % SEQ > i / SEQ {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask_values, &[SEQ, SEQ]).unwrap();
    let scale = 1.0 / (dh as f64).sqrt();
    fwd_bwd(c, "causal_attention/composed", &qkv, |t| {
        let scores = t[0]
            .mul_scalar(scale)
            .unwrap()
            .matmul(&t[1].transpose(2, 3).unwrap())
            .unwrap()
            .add(&mask)
            .unwrap();
        scores.softmax(3).unwrap().matmul(&t[2]).unwrap()
    });
    fwd_bwd(c, "causal_attention/fused", &qkv, |t| {
        t[0].scaled_dot_product_attention(&t[1], &t[2], true, scale)
            .unwrap()
    });

    let d = 256;
    let ln = [
        leaf(&[BATCH * SEQ, d], &mut rng),
        Tensor::ones(&[d], DType::F32).requires_grad_(true).unwrap(),
        Tensor::zeros(&[d], DType::F32)
            .requires_grad_(true)
            .unwrap(),
    ];
    fwd_bwd(c, "layer_norm", &ln, |t| {
        t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5).unwrap()
    });

    let scores = [leaf(&[BATCH, h, SEQ, SEQ], &mut rng)];
    fwd_bwd(c, "softmax", &scores, |t| t[0].softmax(3).unwrap());

    let logits = [leaf(&[BATCH * SEQ, VOCAB], &mut rng)];
    let targets: Vec<usize> = (0..BATCH * SEQ).map(|_| rng.gen_range(0..VOCAB)).collect();
    fwd_bwd(c, "cross_entropy", &logits, |t| {
        t[0].cross_entropy(&targets, None, Reduction::Mean).unwrap()
    });
}

criterion_group!(benches, lm_step, ops);
criterion_main!(benches);
