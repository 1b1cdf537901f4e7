//! Seeded random CTC batches for the comparison with PyTorch (`scripts/compare-ctc.sh`):
//! for each batch, f64 logits `[T, N, C]`, targets with repeated labels and empty ones,
//! input lengths down to 0, a blank that is not always 0, one of the three reductions and
//! `zero_infinity` (only batches with it hold targets too long for their inputs: their
//! losses are infinite, where PyTorch's gradient is NaN and ours 0). Prints
//! one JSON document: per batch the inputs, the loss of `ctc_loss(log_softmax(logits))` and
//! its gradient with respect to the logits (of the summed losses for `Reduction::None`).
//!
//! `cargo run -p engine --example ctc_random -- [--batches 40] [--seed 0]`

use engine::{DType, Reduction, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Minimum number of frames for `labels`: one per label plus a blank between equal
/// neighbours.
fn min_frames(labels: &[usize]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}

fn batch(rng: &mut ChaCha8Rng) -> engine::Result<Value> {
    let (frames, n, c) = (
        rng.gen_range(1..=40),
        rng.gen_range(1..=6),
        rng.gen_range(2..=12),
    );
    let blank = if rng.gen_bool(0.7) {
        0
    } else {
        rng.gen_range(0..c)
    };
    let reduction = [Reduction::None, Reduction::Sum, Reduction::Mean][rng.gen_range(0..3)];
    let zero_infinity = rng.gen_bool(0.5);
    let (mut targets, mut input_lengths, mut target_lengths) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let input_length = rng.gen_range(0..=frames);
        let mut labels: Vec<usize> = Vec::new();
        for _ in 0..rng.gen_range(0..=frames.min(15)) {
            // Half the time the previous label again.
            let label = match labels.last() {
                Some(&l) if rng.gen_bool(0.5) => l,
                _ => (blank + rng.gen_range(1..c)) % c,
            };
            labels.push(label);
        }
        // With zero_infinity, about a third of the targets may not fit their inputs.
        if !zero_infinity || rng.gen_bool(0.7) {
            while min_frames(&labels) > input_length {
                labels.pop();
            }
        }
        input_lengths.push(input_length);
        target_lengths.push(labels.len());
        targets.extend(labels);
    }
    let scale = [1.0, 3.0, 10.0][rng.gen_range(0..3)];
    let logits =
        Tensor::randn(&[frames, n, c], 0.0, scale, DType::F64, rng).requires_grad_(true)?;
    let loss = logits.log_softmax(2)?.ctc_loss(
        &targets,
        &input_lengths,
        &target_lengths,
        blank,
        reduction,
        zero_infinity,
    )?;
    loss.sum_all()?.backward()?;
    let grad = logits.grad().expect("logits require grad").to_vec_f64()?;
    Ok(json!({
        "shape": [frames, n, c],
        "blank": blank,
        "reduction": format!("{reduction:?}").to_lowercase(),
        "zero_infinity": zero_infinity,
        "logits": logits.to_vec_f64()?,
        "targets": targets,
        "input_lengths": input_lengths,
        "target_lengths": target_lengths,
        "loss": loss.to_vec_f64()?,
        "grad": grad,
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut batches, mut seed) = (40, 0);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--batches" => batches = value.parse()?,
            "--seed" => seed = value.parse()?,
            _ => return Err(format!("unknown option {flag} (--batches N, --seed S)").into()),
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let out: Vec<Value> = (0..batches)
        .map(|_| batch(&mut rng))
        .collect::<engine::Result<_>>()?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
