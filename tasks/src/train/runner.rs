//! [`run`]: train (or resume) a [`Task`] to the end, to `--stop-after`, or to divergence.

use super::checkpoint::{read_checkpoint, tensors_under, SavedState};
use super::{
    build_optimizer, diagnostics, optimize, seeded, write_plots, Inspect, Rngs, Setup, StepOutcome,
    Task, TrainConfig, CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE,
};
use crate::metrics::{read_records, MetricsLog};
use crate::{Error, Result};
use engine::Tensor;
use nn::{Checkpoint, CosineSchedule, ModuleExt, Optimizer};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run: a fresh configuration or a directory to resume, plus process options.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where checkpoints, metrics, plots and task outputs go.
    pub out: PathBuf,
    /// Resume from `out`'s checkpoint instead of starting fresh.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps, as if interrupted.
    pub stop_after: Option<usize>,
    /// Show a progress bar and print lines.
    pub verbose: bool,
    /// Draw plots at the end (the programs always do, `--quiet` included).
    pub plots: bool,
    /// May run a fetch script when the default data is missing.
    pub fetch: bool,
    /// Start afresh in an `out` that already holds a run (its files are replaced).
    pub overwrite: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All steps trained.
    Completed,
    /// Stopped by `--stop-after` with a checkpoint; `--resume` continues.
    Stopped,
    /// The loss or the gradient norm became non-finite, or the loss exceeded `--max-loss`,
    /// at `step`; nothing of that step was applied, and the last checkpoint written (if
    /// any) is kept as it was, at an earlier step.
    Diverged {
        /// The 1-based step whose loss or gradient was bad.
        step: usize,
        /// What went wrong.
        reason: String,
        /// The first parameter (in `named_parameters` order) whose gradient — or, when the
        /// backward pass did not run, whose value — holds a NaN or infinity.
        first_non_finite: Option<String>,
    },
}

impl Outcome {
    /// `completed`, `stopped` or `diverged`, as in `summary.json`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Stopped => "stopped",
            Outcome::Diverged { .. } => "diverged",
        }
    }

    /// The programs' exit status for this outcome: 0, except 3 for a diverged run (1 is an
    /// error, 2 a usage or configuration error).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Diverged { .. } => 3,
            _ => 0,
        }
    }
}

/// What a finished, stopped or diverged run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// How the run ended.
    pub outcome: Outcome,
    /// Steps completed.
    pub steps: usize,
    /// Last training loss (NaN when no step completed).
    pub train_loss: f64,
    /// The last value of each evaluation metric (`val_loss`, …).
    pub eval: BTreeMap<String, f64>,
    /// Wall-clock seconds spent in this process.
    pub seconds: f64,
    /// Training items (the task's unit) per second in this process.
    pub throughput: f64,
    /// `--resume` found the run already finished and did nothing.
    pub already_complete: bool,
}

impl RunSummary {
    /// The last value of evaluation metric `key`.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.eval.get(key).copied()
    }
}

/// The training state of a run.
struct Trainer<T: Task> {
    train: TrainConfig,
    cfg: T::Config,
    task: T,
    opt: Box<dyn Optimizer>,
    sched: CosineSchedule,
    params: Vec<(String, Tensor)>,
    rngs: Rngs,
}

impl<T: Task> Trainer<T> {
    fn new(train: TrainConfig, cfg: T::Config, setup: Setup) -> Result<Self> {
        let task = T::load(&cfg, setup, &mut seeded(train.seed, 0))?;
        let params = task.model().named_parameters();
        let opt = build_optimizer(&train, task.model())?;
        Ok(Trainer {
            sched: train.lr_schedule(),
            rngs: Rngs {
                batch: seeded(train.seed, 1),
                dropout: seeded(train.seed, 2),
            },
            train,
            cfg,
            task,
            opt,
            params,
        })
    }

    fn checkpoint(&self, step: usize) -> Result<Checkpoint> {
        let mut tensors = BTreeMap::new();
        for (k, t) in self.task.model().state_dict()? {
            tensors.insert(format!("model.{k}"), t);
        }
        for (k, t) in self.opt.state_dict()? {
            tensors.insert(format!("optim.{k}"), t);
        }
        let state = SavedState {
            train: self.train.clone(),
            task: serde_json::to_value(&self.cfg).expect("settings serialize"),
            state: self.task.state(),
            batch_rng_word_pos: self.rngs.batch.get_word_pos().to_string(),
            dropout_rng_word_pos: self.rngs.dropout.get_word_pos().to_string(),
        };
        Ok(Checkpoint {
            step: step as u64,
            config: serde_json::to_string(&state).expect("state serializes"),
            tensors,
        })
    }

    fn restore(&mut self, ckpt: &Checkpoint, state: &SavedState) -> Result<()> {
        self.task
            .model()
            .load_state_dict(&tensors_under(ckpt, "model."))?;
        self.opt.load_state_dict(&tensors_under(ckpt, "optim."))?;
        let pos = |s: &str| {
            s.parse::<u128>()
                .map_err(|e| Error::Data(format!("checkpoint RNG state {s:?}: {e}")))
        };
        self.rngs
            .batch
            .set_word_pos(pos(&state.batch_rng_word_pos)?);
        self.rngs
            .dropout
            .set_word_pos(pos(&state.dropout_rng_word_pos)?);
        Ok(())
    }

    /// Evaluation metrics in eval mode, without entropy recording.
    fn evaluate(&mut self) -> Result<Vec<(&'static str, f64)>> {
        let model = self.task.model();
        model.eval();
        model.set_record_entropy(false);
        let metrics = self.task.evaluate(&mut self.rngs);
        self.task.model().train();
        metrics
    }
}

/// The name of the first of `params` whose gradient (with `grads`) or value holds a NaN or
/// an infinity.
fn first_non_finite(params: &[(String, Tensor)], grads: bool) -> Result<Option<String>> {
    for (name, p) in params {
        let t = if grads { p.grad() } else { Some(p.clone()) };
        if let Some(t) = t {
            if t.to_vec_f64()?.iter().any(|x| !x.is_finite()) {
                return Ok(Some(name.clone()));
            }
        }
    }
    Ok(None)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// Where a run starts: a trainer at a step with its metrics log open, or a resumed run that
/// is already complete.
enum Opened<T: Task> {
    Ready {
        tr: Box<Trainer<T>>,
        start: usize,
        log: MetricsLog,
    },
    Complete(RunSummary),
}

/// Set up a fresh run (settings checked, nothing written before they are) or restore a
/// saved one (nothing created or rewritten before its checkpoint is known to be usable).
fn open<T: Task>(cfg: Option<(TrainConfig, T::Config)>, opts: &RunOptions) -> Result<Opened<T>> {
    let ckpt_path = opts.out.join(CHECKPOINT_FILE);
    let metrics_path = opts.out.join(METRICS_FILE);
    if opts.stop_after == Some(0) {
        return Err(Error::Config("--stop-after must be at least 1".into()));
    }
    if !opts.resume {
        let (train, cfg) =
            cfg.ok_or_else(|| Error::Data("no configuration to start a run".into()))?;
        train.validate()?;
        T::validate(&cfg, &train)?;
        if !opts.overwrite && (ckpt_path.exists() || metrics_path.exists()) {
            return Err(Error::Config(format!(
                "{} already holds a run; continue it with --resume {}, or pass --overwrite to \
                 start over (its files will be replaced)",
                opts.out.display(),
                opts.out.display()
            )));
        }
        let setup = Setup {
            train: &train,
            saved: None,
            fetch: opts.fetch,
            verbose: opts.verbose,
        };
        let tr = Trainer::<T>::new(train.clone(), cfg, setup)?;
        std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
        if opts.overwrite {
            // The replaced run's checkpoint and summary must not outlive it: a new run that
            // stops before its first checkpoint would otherwise resume (or be probed as) the
            // old one.
            for path in [ckpt_path, opts.out.join(SUMMARY_FILE)] {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_err(&path)(e))
                    }
                    _ => {}
                }
            }
        }
        let log = MetricsLog::create(&metrics_path)?;
        return Ok(Opened::Ready {
            tr: Box::new(tr),
            start: 0,
            log,
        });
    }
    if !ckpt_path.is_file() {
        return Err(Error::Config(format!(
            "--resume {}: there is no {} to resume; pass the --out directory of an earlier run",
            opts.out.display(),
            ckpt_path.display()
        )));
    }
    let saved = read_checkpoint::<T>(&ckpt_path)?;
    let step = saved.step;
    if step >= saved.train.steps {
        return Ok(Opened::Complete(already_complete(step, opts)?));
    }
    if let Some(s) = opts.stop_after.filter(|&s| s <= step) {
        return Err(Error::Config(format!(
            "--stop-after {s} is not beyond the checkpoint in {}, which is at step {step}",
            opts.out.display()
        )));
    }
    if !metrics_path.is_file() {
        return Err(Error::Config(format!(
            "--resume {}: {} is missing, so the resumed run's metrics would be incomplete; \
             put it back, or start a new run with --out",
            opts.out.display(),
            metrics_path.display()
        )));
    }
    let setup = Setup {
        train: &saved.train,
        saved: Some(&saved.state.state),
        fetch: opts.fetch,
        verbose: opts.verbose,
    };
    let mut tr = Trainer::<T>::new(saved.train.clone(), saved.task, setup)?;
    tr.restore(&saved.ckpt, &saved.state)?;
    let log = MetricsLog::resume(&metrics_path, step as u64)?;
    if opts.verbose {
        eprintln!(
            "resuming {} at step {step} of {} with its saved configuration",
            opts.out.display(),
            saved.train.steps
        );
    }
    Ok(Opened::Ready {
        tr: Box::new(tr),
        start: step,
        log,
    })
}

/// A progress bar over `total` steps at `start`, or a hidden one.
fn progress_bar(total: usize, start: usize, verbose: bool) -> indicatif::ProgressBar {
    if !verbose {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_position(start as u64);
    bar
}

/// Train (or resume) a `T` per `cfg` (shared and task settings; `None` when resuming) and
/// `opts`. Writes `metrics.jsonl` (a record every `log_every` steps, step 1, evaluation
/// steps and the last step), `checkpoint.safetensors` (atomically, every `checkpoint_every`
/// steps and at the stop), `summary.json`, the plots and the task's outputs to `opts.out`.
///
/// A diverged run is not an error: it returns [`Outcome::Diverged`] with its metrics, plots
/// and summary written. Errors: invalid settings ([`Error::Config`], naming the flag, with
/// nothing written), missing or unusable data, an unwritable output directory, a missing or
/// corrupt checkpoint on resume.
pub fn run<T: Task>(
    cfg: Option<(TrainConfig, T::Config)>,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let (mut tr, start, mut log) = match open::<T>(cfg, opts)? {
        Opened::Ready { tr, start, log } => (tr, start, log),
        Opened::Complete(summary) => return Ok(summary),
    };
    let cfg = tr.train.clone();
    if opts.verbose {
        eprintln!(
            "{}; {}, {} parameters; {} lr {:e} (warmup {}), {} steps",
            tr.task.describe(),
            cfg.variant.name(),
            tr.task.model().num_parameters(),
            cfg.optimizer.name(),
            cfg.lr,
            cfg.warmup,
            cfg.steps,
        );
    }
    let end = opts.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    let bar = progress_bar(cfg.steps, start, opts.verbose);
    let t0 = Instant::now();
    let items = tr.task.items_per_step();
    let rate = |done: usize| ((done - start) * items) as f64 / t0.elapsed().as_secs_f64();
    let params: Vec<Tensor> = tr.params.iter().map(|(_, p)| p.clone()).collect();
    let mut last_loss = f64::NAN;
    let mut eval = BTreeMap::new();
    let mut outcome = if end < cfg.steps {
        Outcome::Stopped
    } else {
        Outcome::Completed
    };
    let mut done = start;
    while done < end {
        let step = done;
        let lr = tr.sched.lr(step);
        tr.opt.set_lr(lr);
        let eval_now = (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps;
        let log_now = (step + 1) % cfg.log_every == 0 || step == 0 || eval_now;
        tr.task.model().set_record_entropy(log_now);
        let mut rec = json!({"step": step + 1, "lr": lr});
        let result = match tr.task.loss(&mut tr.rngs) {
            Ok(loss) => {
                if log_now {
                    // The diagnostics read the forward just done; the update does not change
                    // them.
                    let diag = diagnostics(tr.task.model())?;
                    rec.as_object_mut().expect("an object").extend(diag);
                }
                optimize(&loss, &params, tr.opt.as_mut(), cfg.grad_clip, cfg.max_loss)?
            }
            // An op that cannot compute on non-finite values (σReparam's power step) ends the
            // run as diverged, like a non-finite loss.
            Err(e) if e.is_non_finite() => StepOutcome::Diverged {
                loss: f64::NAN,
                grad_norm: None,
                reason: e.to_string(),
            },
            Err(e) => return Err(e),
        };
        let (loss_v, grad_norm) = match result {
            StepOutcome::Updated { loss, grad_norm } => (loss, grad_norm),
            StepOutcome::Diverged {
                loss,
                grad_norm,
                reason,
            } => {
                let first = first_non_finite(&tr.params, grad_norm.is_some())?;
                tr.opt.zero_grad();
                rec["loss"] = json!(loss);
                rec["grad_norm"] = json!(grad_norm);
                rec["diverged"] = json!(true);
                log.append(&rec)?;
                last_loss = loss;
                if opts.verbose {
                    let first = first.as_ref().map_or(String::new(), |f| {
                        format!(" (first non-finite parameter: {f})")
                    });
                    let kept = if opts.out.join(CHECKPOINT_FILE).exists() {
                        "the last checkpoint, of an earlier step, is kept"
                    } else {
                        "no checkpoint was written"
                    };
                    bar.suspend(|| {
                        eprintln!("diverged at step {}: {reason}{first}; {kept}", step + 1)
                    });
                }
                outcome = Outcome::Diverged {
                    step: step + 1,
                    reason,
                    first_non_finite: first,
                };
                break;
            }
        };
        done += 1;
        last_loss = loss_v;
        rec["loss"] = json!(loss_v);
        rec["grad_norm"] = json!(grad_norm);
        if eval_now {
            let metrics = tr.evaluate()?;
            let line = format!(
                "step {done:>6}  train {loss_v:.4}  {}  {:.0} {}/s",
                T::eval_line(&metrics),
                rate(done),
                T::ITEM
            );
            // A hidden bar (output not a terminal) drops println; keep the line.
            if opts.verbose && bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            for (k, v) in metrics {
                rec[k] = json!(v);
                eval.insert(k.to_string(), v);
            }
        }
        if log_now {
            log.append(&rec)?;
        }
        if done % cfg.checkpoint_every == 0 || done == end {
            tr.checkpoint(done)?
                .save(&opts.out.join(CHECKPOINT_FILE))
                .map_err(nn::Error::from)?;
        }
        bar.set_message(format!(
            "loss {loss_v:.4} | {:.0} {}/s",
            rate(done),
            T::ITEM
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let throughput = ((done - start) * items) as f64 / seconds.max(1e-9);
    if outcome == Outcome::Completed {
        let results = tr
            .task
            .finish(&opts.out, &mut seeded(cfg.seed, 3), opts.verbose)?;
        eval.extend(results);
    }
    if opts.plots && outcome != Outcome::Stopped {
        write_plots(&opts.out, T::LOSS_UNIT, T::plots_sigma_of)?;
    }
    if outcome == Outcome::Stopped && opts.verbose {
        eprintln!(
            "stopped at step {end} of {}; continue with:\n    cargo run --release -p tasks --bin {} -- --resume {}",
            cfg.steps,
            T::NAME,
            opts.out.display()
        );
    }
    let summary = RunSummary {
        outcome,
        steps: done,
        train_loss: last_loss,
        eval,
        seconds,
        throughput,
        already_complete: false,
    };
    write_summary(&opts.out, &summary, T::ITEM)?;
    if opts.verbose {
        let evals: String = summary
            .eval
            .iter()
            .map(|(k, v)| format!(", {k} {v:.4}"))
            .collect();
        eprintln!(
            "{}: {done} steps in {seconds:.0} s ({throughput:.0} {}/s), train loss \
             {last_loss:.4}{evals}; outputs in {}",
            summary.outcome.name(),
            T::ITEM,
            opts.out.display()
        );
    }
    Ok(summary)
}

/// `summary.json`: outcome (with the step, reason and first non-finite parameter of a
/// diverged run), steps, seconds, throughput, the last training loss and the last value of
/// each evaluation metric.
fn write_summary(out: &Path, s: &RunSummary, item: &str) -> Result<()> {
    let mut v = json!({
        "outcome": s.outcome.name(),
        "steps": s.steps,
        "seconds": s.seconds,
        "throughput": s.throughput,
        "throughput_unit": format!("{item}/s"),
        "train_loss": s.train_loss,
        "threads": rayon::current_num_threads(),
    });
    for (k, x) in &s.eval {
        v[k] = json!(x);
    }
    if let Outcome::Diverged {
        step,
        reason,
        first_non_finite,
    } = &s.outcome
    {
        v["diverged_at_step"] = json!(step);
        v["reason"] = json!(reason);
        v["first_non_finite"] = json!(first_non_finite);
    }
    let path = out.join(SUMMARY_FILE);
    std::fs::write(&path, v.to_string()).map_err(io_err(&path))
}

/// The answer to `--resume` on a run whose checkpoint is at its last step: nothing is
/// trained or rewritten; the losses are read back from its metrics.
fn already_complete(step: usize, opts: &RunOptions) -> Result<RunSummary> {
    if opts.verbose {
        eprintln!(
            "{} is already complete ({step} of {step} steps); nothing to do (outputs left as they are)",
            opts.out.display()
        );
    }
    let recs = read_records(&opts.out.join(METRICS_FILE))?;
    let mut eval = BTreeMap::new();
    for r in &recs {
        for (k, v) in r.as_object().into_iter().flatten() {
            if let (true, Some(x)) = (k.starts_with("val_"), v.as_f64()) {
                eval.insert(k.clone(), x);
            }
        }
    }
    Ok(RunSummary {
        outcome: Outcome::Completed,
        steps: step,
        train_loss: recs
            .iter()
            .rev()
            .find_map(|r| r["loss"].as_f64())
            .unwrap_or(f64::NAN),
        eval,
        seconds: 0.0,
        throughput: 0.0,
        already_complete: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::DType;

    #[test]
    fn first_non_finite_names_the_first_bad_value_or_gradient() {
        let t = |v: &[f64]| {
            Tensor::from_f64s(v, &[v.len()], DType::F32)
                .unwrap()
                .requires_grad_(true)
                .unwrap()
        };
        let params = vec![
            ("a".to_string(), t(&[1.0, 2.0])),
            ("b".to_string(), t(&[f64::INFINITY, 0.0])),
            ("c".to_string(), t(&[f64::NAN])),
        ];
        assert_eq!(
            first_non_finite(&params, false).unwrap().as_deref(),
            Some("b")
        );
        // No gradients yet: nothing to report.
        assert_eq!(first_non_finite(&params, true).unwrap(), None);
        // d(a·∞)/da = ∞ for a's gradient; b's and c's gradients stay unset.
        let inf = Tensor::from_f64s(&[f64::INFINITY, 1.0], &[2], DType::F32).unwrap();
        params[0]
            .1
            .mul(&inf)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            first_non_finite(&params, true).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(first_non_finite(&params[1..], true).unwrap(), None);
    }
}
