//! Engine micro-benchmarks (criterion).
//!
//! Run briefly with
//! `RAYON_NUM_THREADS=1 cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`
//! (and `=2`).
//!
//! - `sgemm/N`: f32 `[N,N]·[N,N]`. Throughput is declared as `Elements(2·N³)`, the number of
//!   floating-point operations, so criterion's "elem/s" figure reads as FLOP/s (GFLOP/s when
//!   it prints "Gelem/s").
//! - `add_1m`: elementwise f32 add of two contiguous 1,048,576-element tensors (elements/s).
//! - `softmax_64x128x128`: f32 softmax over the last dim of `[64,128,128]` (elements/s).
//! - `tiny/*`: the per-op overhead of the engine on 4-element f32 tensors that require grad:
//!   `add_forward` records one add; `sum_backward` is `sum_all` + `backward` alone;
//!   `add_sum_backward` is add + `sum_all` + `backward`, so one recorded add costs its
//!   forward plus the difference of the last two.
//! - `conv1d/speech_frontend`: f32 `conv1d` forward and backward at the speech model's
//!   front-end shape (input `[16, 80, 600]`, weight `[288, 80, 7]` with a bias, stride 3):
//!   the weight and bias gradients, as for log-mel features that need none.
//! - `ctc/T150_N32_C30_L40`: f32 `ctc_loss` (mean) forward and backward on log-probabilities
//!   `[150, 32, 30]` with 40 labels per sequence, the full input length.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{Conv1dOptions, DType, Reduction, Tensor};
use rand::{Rng, SeedableRng};

fn sgemm(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut g = c.benchmark_group("sgemm");
    g.sample_size(10);
    for n in [256usize, 512, 1024] {
        let a = Tensor::randn(&[n, n], 0.0, 1.0, DType::F32, &mut rng);
        let b = Tensor::randn(&[n, n], 0.0, 1.0, DType::F32, &mut rng);
        g.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| black_box(a.matmul(&b).unwrap()))
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let n = 1 << 20;
    let a = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
    let b = Tensor::randn(&[n], 0.0, 1.0, DType::F32, &mut rng);
    let mut g = c.benchmark_group("elementwise");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("add_1m", |bch| bch.iter(|| black_box(a.add(&b).unwrap())));
    g.finish();

    let x = Tensor::randn(&[64, 128, 128], 0.0, 1.0, DType::F32, &mut rng);
    let mut g = c.benchmark_group("softmax");
    g.throughput(Throughput::Elements(x.numel() as u64));
    g.bench_function("softmax_64x128x128", |bch| {
        bch.iter(|| black_box(x.softmax(2).unwrap()))
    });
    g.finish();
}

fn tiny(c: &mut Criterion) {
    let leaf = |v: [f32; 4]| {
        Tensor::from_vec(v.to_vec(), &[4])
            .unwrap()
            .requires_grad_(true)
            .unwrap()
    };
    let a = leaf([1.0, 2.0, 3.0, 4.0]);
    let b = leaf([0.5, -1.0, 2.0, 0.0]);
    let mut g = c.benchmark_group("tiny");
    g.bench_function("add_forward", |bch| {
        bch.iter(|| black_box(a.add(&b).unwrap()))
    });
    g.bench_function("sum_backward", |bch| {
        bch.iter(|| {
            a.sum_all().unwrap().backward().unwrap();
            a.zero_grad();
        })
    });
    g.bench_function("add_sum_backward", |bch| {
        bch.iter(|| {
            a.add(&b).unwrap().sum_all().unwrap().backward().unwrap();
            a.zero_grad();
            b.zero_grad();
        })
    });
    g.finish();
}

fn conv1d(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let leaf = |shape: &[usize], rng: &mut rand_chacha::ChaCha8Rng| {
        Tensor::randn(shape, 0.0, 0.1, DType::F32, rng)
            .requires_grad_(true)
            .unwrap()
    };
    let x = Tensor::randn(&[16, 80, 600], 0.0, 1.0, DType::F32, &mut rng);
    let w = leaf(&[288, 80, 7], &mut rng);
    let b = leaf(&[288], &mut rng);
    let opts = Conv1dOptions {
        stride: 3,
        ..Conv1dOptions::default()
    };
    let mut g = c.benchmark_group("conv1d");
    g.sample_size(10);
    g.bench_function("speech_frontend", |bch| {
        bch.iter(|| {
            let y = x.conv1d(&w, Some(&b), opts).unwrap();
            y.sum_all().unwrap().backward().unwrap();
            w.zero_grad();
            b.zero_grad();
        })
    });
    g.finish();
}

fn ctc(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let (frames, n, classes, len) = (150, 32, 30, 40);
    let lp = Tensor::randn(&[frames, n, classes], 0.0, 1.0, DType::F32, &mut rng)
        .log_softmax(2)
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let targets: Vec<usize> = (0..n * len).map(|_| rng.gen_range(1..classes)).collect();
    let (input_lengths, target_lengths) = (vec![frames; n], vec![len; n]);
    let mut g = c.benchmark_group("ctc");
    g.bench_function("T150_N32_C30_L40", |bch| {
        bch.iter(|| {
            lp.ctc_loss(
                &targets,
                &input_lengths,
                &target_lengths,
                0,
                Reduction::Mean,
                false,
            )
            .unwrap()
            .backward()
            .unwrap();
            lp.zero_grad();
        })
    });
    g.finish();
}

criterion_group!(benches, sgemm, elementwise, tiny, conv1d, ctc);
criterion_main!(benches);
