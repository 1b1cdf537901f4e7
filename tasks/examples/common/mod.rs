//! What the step-timing examples (`lm_step`, `vit_step`) share: the timed loop, its median
//! and the peak resident memory, reported the same way for `scripts/compare-pytorch.sh`.

use serde_json::{json, Value};
use std::time::Instant;
use tasks::train::{optimize, StepOutcome, TrainConfig, Variant};

/// The flags every step-timing example takes.
#[derive(Debug, clap::Args)]
pub struct TimingArgs {
    /// Model variant (LayerNorm placement, plain or σReparam linears); its optimizer and
    /// learning rate are the program's recipe.
    #[arg(long, value_enum, default_value = "pre-ln")]
    pub variant: Variant,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 2)]
    pub warmup_steps: usize,
    /// Worker threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the weights (`seed`), the batches (`seed + 1`) and dropout (`seed + 2`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TimingArgs {
    /// Check `--steps` and start the thread pool.
    pub fn start(&self) -> Result<(), Box<dyn std::error::Error>> {
        tasks::keep_freed_memory();
        if self.steps == 0 {
            return Err("--steps must be positive".into());
        }
        tasks::train::set_threads(self.threads);
        Ok(())
    }

    /// The JSON line of a timed run: these settings, `timing`, the peak memory, and the
    /// example's own fields `extra` (model shape, throughput).
    pub fn report(&self, timing: &Timing, extra: Value) -> Value {
        let mut v = json!({
            "impl": "ours",
            "version": env!("CARGO_PKG_VERSION"),
            "variant": self.variant.name(),
            "threads": rayon::current_num_threads(),
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "median_ms": timing.median * 1e3,
            "min_ms": timing.min * 1e3,
            "peak_rss_mib": peak_rss_mib(),
            "first_loss": timing.first_loss,
            "last_loss": timing.last_loss,
        });
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    }
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What [`time_steps`] measured.
pub struct Timing {
    /// Median seconds per timed step.
    pub median: f64,
    /// Fastest timed step, in seconds.
    pub min: f64,
    /// Loss of the first step (warm-up included).
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
}

/// Run `warmup + steps` training steps — `loss(step)` draws a batch and runs the forward
/// (untimed: the batch drawing is inside, but cheap), then the trainer's own
/// [`optimize`] — timing the last `steps` from the forward to the end of the update.
pub fn time_steps(
    warmup: usize,
    steps: usize,
    train: &TrainConfig,
    params: &[engine::Tensor],
    opt: &mut dyn nn::Optimizer,
    mut loss: impl FnMut() -> Result<(engine::Tensor, Instant), Box<dyn std::error::Error>>,
) -> Result<Timing, Box<dyn std::error::Error>> {
    let mut times = Vec::with_capacity(steps);
    let mut losses = Vec::with_capacity(warmup + steps);
    for step in 0..warmup + steps {
        let (l, t0) = loss()?;
        match optimize(&l, params, opt, train.grad_clip, train.max_loss)? {
            StepOutcome::Updated { loss, .. } => losses.push(loss),
            StepOutcome::Diverged { reason, .. } => return Err(reason.into()),
        }
        if step >= warmup {
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
    Ok(Timing {
        median,
        min: times[0],
        first_loss: losses[0],
        last_loss: losses[losses.len() - 1],
    })
}
