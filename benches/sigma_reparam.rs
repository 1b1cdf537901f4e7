//! Forward + backward of the fused σReparam linear (training mode: one power step per
//! forward) against the plain linear layer, f32, bias on, input requiring grad, loss
//! `Σ y`.
//!
//! Two measurements of the same work: wall time (criterion's default) and the CPU time of
//! all threads of the process (Linux `/proc/self/task/*/schedstat`), which other work on a
//! shared machine disturbs far less. Quote the σReparam / plain ratio of each.
//!
//! `cargo bench --bench sigma_reparam -- --warm-up-time 1 --measurement-time 5`
//! (`RAYON_NUM_THREADS=1` for one thread).

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion};
use engine::{DType, Tensor};
use nn::{GammaInit, Linear, Module, ModuleExt, SigmaReparamLinear};
use rand::SeedableRng;

/// `(rows, in, out)`: a batch of 2048 rows through a widening and a narrowing layer.
const SHAPES: [(usize, usize, usize); 2] = [(2048, 256, 1024), (2048, 1024, 256)];

/// Nanoseconds on a CPU summed over the threads of this process.
struct ProcessCpuTime(WallTime);

fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task is readable (Linux)")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Measurement for ProcessCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        process_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time.
        self.0.formatter()
    }
}

fn fwd_bwd<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let mut group = c.benchmark_group(group_name);
    for (rows, inp, out) in SHAPES {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let x = Tensor::randn(&[rows, inp], 0.0, 1.0, DType::F32, &mut rng)
            .requires_grad_(true)
            .unwrap();
        let plain = Linear::new(inp, out, true, DType::F32, &mut rng).unwrap();
        let sigma = SigmaReparamLinear::new(inp, out, true, GammaInit::Sigma, DType::F32, &mut rng)
            .unwrap();
        let shape = format!("{rows}x{inp}->{out}");
        let mut bench = |name: &str, layer: &dyn Module, forward: &dyn Fn(&Tensor) -> Tensor| {
            group.bench_function(format!("{name}/{shape}"), |b| {
                b.iter(|| {
                    layer.zero_grad();
                    x.zero_grad();
                    forward(&x).sum_all().unwrap().backward().unwrap();
                })
            });
        };
        bench("plain", &plain, &|x| plain.forward(x).unwrap());
        bench("sigma_reparam", &sigma, &|x| sigma.forward(x).unwrap());
    }
    group.finish();
}

fn wall(c: &mut Criterion) {
    fwd_bwd(c, "linear_fwd_bwd_wall");
}

fn cpu(c: &mut Criterion<ProcessCpuTime>) {
    fwd_bwd(c, "linear_fwd_bwd_cpu");
}

criterion_group!(wall_time, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ProcessCpuTime(WallTime));
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
