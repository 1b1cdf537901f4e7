//! Forward + backward of the fused σReparam linear (training mode: one power step per
//! forward) against the plain linear layer, f32, bias on, input requiring grad.
//!
//! `cargo bench --bench sigma_reparam -- --warm-up-time 1 --measurement-time 5`

use criterion::{criterion_group, criterion_main, Criterion};
use engine::{DType, Tensor};
use nn::{GammaInit, Linear, ModuleExt, SigmaReparamLinear};
use rand::SeedableRng;

/// `(rows, in, out)`: a batch of 2048 rows through a widening and a narrowing layer.
const SHAPES: [(usize, usize, usize); 2] = [(2048, 256, 1024), (2048, 1024, 256)];

fn fwd_bwd(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear_fwd_bwd");
    for (rows, inp, out) in SHAPES {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let x = Tensor::randn(&[rows, inp], 0.0, 1.0, DType::F32, &mut rng)
            .requires_grad_(true)
            .unwrap();
        let plain = Linear::new(inp, out, true, DType::F32, &mut rng).unwrap();
        let sigma = SigmaReparamLinear::new(inp, out, true, GammaInit::Sigma, DType::F32, &mut rng)
            .unwrap();
        let shape = format!("{rows}x{inp}->{out}");
        group.bench_function(format!("plain/{shape}"), |b| {
            b.iter(|| {
                plain.zero_grad();
                x.zero_grad();
                plain
                    .forward(&x)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
            })
        });
        group.bench_function(format!("sigma_reparam/{shape}"), |b| {
            b.iter(|| {
                sigma.zero_grad();
                x.zero_grad();
                sigma
                    .forward(&x)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fwd_bwd);
criterion_main!(benches);
