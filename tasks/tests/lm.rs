//! End-to-end checks of the `lm` trainer on a slice of real text (the first 100,000
//! characters of the Shakespeare corpus, in `tests/data`).

use nn::Checkpoint;
use std::path::{Path, PathBuf};
use tasks::lm::{Lm, LmConfig};
use tasks::train::{
    Outcome, RunOptions, RunSummary, Task, TrainConfig, Variant, CHECKPOINT_FILE, METRICS_FILE,
};
use tasks::Error;

mod common;
use common::opts;

/// A run's settings: the shared ones and `lm`'s.
type Cfg = (TrainConfig, LmConfig);

fn run(cfg: Option<Cfg>, opts: &RunOptions) -> tasks::Result<RunSummary> {
    tasks::train::run::<Lm>(cfg, opts)
}

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shakespeare-slice.txt")
}

/// A model small enough to train in seconds.
fn tiny(variant: Variant, steps: usize) -> Cfg {
    (
        TrainConfig {
            steps,
            log_every: 5,
            eval_every: 10,
            checkpoint_every: 10,
            ..Lm::defaults(variant)
        },
        LmConfig {
            batch_size: 8,
            seq_len: 32,
            d_model: 32,
            n_layers: 2,
            n_heads: 2,
            eval_batches: 2,
            sample_chars: 20,
            ..LmConfig::new(slice())
        },
    )
}

/// The directory of a tiny 10-step pre-ln run stopped after step 5 (`--stop-after 5`).
fn stopped_run(name: &str) -> PathBuf {
    let out = tmp(name);
    let stop = RunOptions {
        stop_after: Some(5),
        ..opts(&out)
    };
    run(Some(tiny(Variant::PreLn, 10)), &stop).unwrap();
    out
}

/// The step, reason and first non-finite parameter of a diverged run (fails otherwise).
fn diverged(summary: &RunSummary) -> (&usize, &String, &Option<String>) {
    match &summary.outcome {
        Outcome::Diverged {
            step,
            reason,
            first_non_finite,
        } => (step, reason, first_non_finite),
        other => panic!("expected a diverged run, got {other:?}"),
    }
}

/// `cfg` with changes to its shared settings.
fn train_with((mut train, lm): Cfg, f: impl FnOnce(&mut TrainConfig)) -> Cfg {
    f(&mut train);
    (train, lm)
}

/// `cfg` with changes to `lm`'s settings.
fn lm_with((train, mut lm): Cfg, f: impl FnOnce(&mut LmConfig)) -> Cfg {
    f(&mut lm);
    (train, lm)
}

/// `cfg` training on `data`.
fn with_data((train, lm): Cfg, data: &Path) -> Cfg {
    (
        train,
        LmConfig {
            data: data.to_path_buf(),
            ..lm
        },
    )
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("lm", name)
}

#[test]
fn short_run_on_real_text_lowers_the_loss() {
    let out = tmp("learn");
    let cfg = train_with(tiny(Variant::PreLn, 200), |t| {
        t.lr = 3e-3;
        t.warmup = 10;
    });
    let summary = run(
        Some(cfg),
        &RunOptions {
            plots: true,
            ..opts(&out)
        },
    )
    .unwrap();
    let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
    let first = recs[0]["loss"].as_f64().unwrap();
    let last_val = summary.metric("val_loss").unwrap();
    // Uniform over the ~60 characters is ln 60 ≈ 4.1 nats; character statistics alone give
    // about 3.3.
    assert!(first > 3.8, "initial loss {first}");
    assert!(last_val < 2.8, "validation loss {last_val} after 200 steps");
    assert_eq!(summary.outcome, Outcome::Completed);
    let sample = std::fs::read_to_string(out.join("sample.txt")).unwrap();
    assert_eq!(sample.chars().count(), 20);
    for f in ["loss.svg", "entropy.svg", "sample.txt", CHECKPOINT_FILE] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // pre-ln has no σReparam layer, so there is no σ/γ chart.
    assert!(!out.join("sigma_gamma.svg").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted_bit_for_bit() {
    // σReparam (power-iteration state) and dropout (RNG state) must both resume exactly.
    let cfg = lm_with(tiny(Variant::SigmaReparam, 30), |l| {
        l.dropout = 0.1;
    });
    let (a, b, _, _) = common::whole_and_resumed::<Lm>("lm", cfg, 15);
    let metrics = std::fs::read_to_string(a.join(METRICS_FILE)).unwrap();
    assert_eq!(metrics.lines().count(), 7);
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn corrupt_or_truncated_checkpoint_is_refused_and_left_untouched() {
    let out = tmp("corrupt");
    run(Some(tiny(Variant::PreLn, 10)), &opts(&out)).unwrap();
    let path = out.join(CHECKPOINT_FILE);
    let good = std::fs::read(&path).unwrap();
    let metrics = std::fs::read(out.join(METRICS_FILE)).unwrap();
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 1;
    for bytes in [good[..good.len() / 3].to_vec(), flipped] {
        std::fs::write(&path, &bytes).unwrap();
        let err = run(
            None,
            &RunOptions {
                resume: true,
                ..opts(&out)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("corrupt or truncated"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(std::fs::read(out.join(METRICS_FILE)).unwrap(), metrics);
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn missing_and_non_utf8_data_give_clear_errors() {
    let out = tmp("data");
    std::fs::create_dir_all(&out).unwrap();
    let missing = out.join("missing.txt");
    let err = run(
        Some(with_data(tiny(Variant::PreLn, 1), &missing)),
        &opts(&out),
    )
    .unwrap_err();
    assert!(matches!(err, Error::DataMissing { .. }), "{err}");
    assert!(err.to_string().contains("fetch-shakespeare.sh"), "{err}");
    let bad = out.join("latin1.txt");
    std::fs::write(
        &bad,
        b"To be, or not to be: that is the question:\n\xe9t\xe9\n".repeat(50),
    )
    .unwrap();
    let err = run(Some(with_data(tiny(Variant::PreLn, 1), &bad)), &opts(&out)).unwrap_err();
    assert!(matches!(err, Error::NotUtf8 { offset: 43, .. }), "{err}");
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn divergence_is_an_outcome_with_its_step_metrics_plots_and_summary() {
    let out = tmp("diverge");
    let cfg = train_with(tiny(Variant::PreLn, 20), |t| {
        t.lr = 1e30;
        t.warmup = 0;
        t.grad_clip = 1e30;
    });
    let summary = run(
        Some(cfg),
        &RunOptions {
            plots: true,
            ..opts(&out)
        },
    )
    .unwrap();
    let (step, reason, first_non_finite) = diverged(&summary);
    assert!((2..=5).contains(step), "diverged at step {step}");
    assert_eq!(summary.steps, step - 1);
    assert_eq!(summary.outcome.exit_code(), 3);
    let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
    let last = recs.last().unwrap();
    assert_eq!(last["step"], *step);
    assert_eq!(last["diverged"], true);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["outcome"], "diverged");
    assert_eq!(json["diverged_at_step"], *step);
    assert_eq!(json["reason"], reason.as_str());
    // An AdamW step of 1e30 leaves every weight finite in f32 but overflows the activations:
    // the loss is NaN and no parameter is non-finite.
    assert_eq!(reason, "loss is NaN");
    assert_eq!(*first_non_finite, None);
    assert_eq!(last["loss"], serde_json::Value::Null);
    assert_eq!(json["first_non_finite"], serde_json::Value::Null);
    for f in ["loss.svg", "entropy.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The checkpoint holds the last good step, not the diverged one.
    let ckpt = Checkpoint::load(&out.join(CHECKPOINT_FILE));
    assert!(ckpt.map_or(true, |c| (c.step as usize) < *step));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_loss_above_max_loss_is_a_divergence_without_a_non_finite_parameter() {
    let out = tmp("max-loss");
    let cfg = train_with(tiny(Variant::PreLn, 20), |t| t.max_loss = 1.0);
    let summary = run(Some(cfg), &opts(&out)).unwrap();
    assert_eq!(
        summary.outcome,
        Outcome::Diverged {
            step: 1,
            reason: format!("loss {} is above --max-loss 1", summary.train_loss),
            first_non_finite: None,
        }
    );
    assert!(summary.train_loss > 3.8);
    std::fs::remove_dir_all(&out).unwrap();
}

fn config_error(cfg: Cfg, out: &Path) -> String {
    match run(Some(cfg), &opts(out)) {
        Err(e @ Error::Config(_)) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn invalid_settings_are_refused_naming_the_flag_before_anything_is_written() {
    let out = tmp("invalid");
    let base = tiny(Variant::PreLn, 10);
    let cases: Vec<(Cfg, &str)> = vec![
        (
            lm_with(base.clone(), |l| {
                l.temperature = 0.0;
            }),
            "--temperature must be finite and > 0, got 0",
        ),
        (
            lm_with(base.clone(), |l| {
                l.temperature = f64::NAN;
            }),
            "--temperature must be finite and > 0, got NaN",
        ),
        (
            train_with(base.clone(), |t| {
                t.grad_clip = -1.0;
            }),
            "--grad-clip must be finite and > 0, got -1",
        ),
        (
            train_with(base.clone(), |t| {
                t.lr = 0.0;
            }),
            "--lr must be finite and > 0, got 0",
        ),
        (
            train_with(base.clone(), |t| {
                t.weight_decay = -0.1;
            }),
            "--weight-decay must be finite and >= 0, got -0.1",
        ),
        (
            lm_with(base.clone(), |l| {
                l.emb_std = 0.0;
            }),
            "--emb-std must be finite and > 0, got 0",
        ),
        (
            train_with(base.clone(), |t| {
                t.gamma_lr_scale = f64::INFINITY;
            }),
            "--gamma-lr-scale must be finite and >= 0, got inf",
        ),
        (
            lm_with(base.clone(), |l| {
                l.residual_scale = f64::NAN;
            }),
            "--residual-scale must be finite and > 0, got NaN",
        ),
        (
            lm_with(base.clone(), |l| {
                l.n_layers = 0;
            }),
            "--n-layers must be at least 1",
        ),
        (
            train_with(base.clone(), |t| t.momentum = 1.0),
            "--momentum must be in [0, 1), got 1",
        ),
        (
            train_with(base.clone(), |t| t.max_loss = f64::NAN),
            "--max-loss must be finite and > 0, got NaN",
        ),
        (
            train_with(base.clone(), |t| t.min_lr_ratio = -1.0),
            "--min-lr-ratio must be finite and >= 0, got -1",
        ),
        (
            train_with(base.clone(), |t| t.eval_every = 0),
            "--eval-every must be at least 1",
        ),
        (
            train_with(base.clone(), |t| t.min_lr_ratio = 5.0),
            "--min-lr-ratio must be at most 1 (the final rate is a fraction of --lr), got 5",
        ),
    ];
    for (cfg, expected) in cases {
        assert_eq!(config_error(cfg, &out), expected);
    }
    if std::fs::read_to_string("/proc/meminfo").is_ok() {
        let err = config_error(
            lm_with(base.clone(), |l| {
                l.seq_len = 100_000;
            }),
            &out,
        );
        // 2 layers × 8 sequences × 2 heads × 100000² × 4 bytes = 1.28e12 bytes.
        assert!(
            err.starts_with("--batch-size 8 × --seq-len 100000 needs about 1192.1 GiB"),
            "{err}"
        );
    }
    assert!(!out.exists(), "a refused run created {}", out.display());
}

#[test]
fn data_that_is_a_directory_says_what_to_pass() {
    let out = tmp("data-dir");
    let dir = std::env::temp_dir();
    let err = run(Some(with_data(tiny(Variant::PreLn, 10), &dir)), &opts(&out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is a directory, not a text file; pass a UTF-8 text file with --data"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn resume_of_a_missing_run_creates_nothing() {
    let out = tmp("resume-missing");
    let err = run(
        None,
        &RunOptions {
            resume: true,
            ..opts(&out)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("there is no"), "{err}");
    assert!(
        err.contains("pass the --out directory of an earlier run"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn resume_of_a_finished_run_changes_nothing_and_a_missing_log_is_refused() {
    let out = tmp("resume-finished");
    let resume = RunOptions {
        resume: true,
        ..opts(&out)
    };
    let done = run(Some(tiny(Variant::PreLn, 10)), &opts(&out)).unwrap();
    let summary = std::fs::read(out.join("summary.json")).unwrap();
    let again = run(None, &resume).unwrap();
    assert!(again.already_complete);
    assert_eq!(again.steps, 10);
    assert_eq!(again.train_loss, done.train_loss);
    assert_eq!(again.eval, done.eval);
    assert!(done.metric("val_loss").is_some());
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), summary);

    // A stopped run whose metrics log went missing cannot be resumed faithfully.
    let stopped = stopped_run("resume-no-log");
    let resume = RunOptions {
        resume: true,
        ..opts(&stopped)
    };
    let err = run(
        None,
        &RunOptions {
            stop_after: Some(5),
            ..resume.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("--stop-after 5 is not beyond the checkpoint in"),
        "{err}"
    );
    std::fs::remove_file(stopped.join(METRICS_FILE)).unwrap();
    let err = run(None, &resume).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl is missing, so the resumed run's metrics would be incomplete"),
        "{err}"
    );
    assert!(!stopped.join(METRICS_FILE).exists());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&stopped).unwrap();
}

/// The `lm` binary on the tiny model: `args` after the size flags.
fn lm_binary(args: &[&str]) -> std::process::Output {
    let slice = slice();
    let mut all = vec![
        "--data",
        slice.to_str().unwrap(),
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--d-model",
        "32",
        "--n-layers",
        "2",
        "--n-heads",
        "2",
        "--eval-batches",
        "2",
        "--quiet",
    ];
    all.extend_from_slice(args);
    std::process::Command::new(env!("CARGO_BIN_EXE_lm"))
        .args(all)
        .output()
        .unwrap()
}

#[test]
fn the_binary_exits_with_status_3_on_divergence_and_0_when_done() {
    let out = tmp("bin-diverge");
    let o = lm_binary(&[
        "--steps",
        "20",
        "--lr",
        "1e30",
        "--warmup",
        "0",
        "--grad-clip",
        "1e30",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains(r#""outcome":"diverged""#), "{summary}");
    let done = tmp("bin-done");
    let o = lm_binary(&[
        "--steps",
        "2",
        "--sample-chars",
        "0",
        "--out",
        done.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // --resume takes the saved configuration: other flags are refused with status 2.
    let o = lm_binary(&["--resume", done.to_str().unwrap(), "--lr", "1"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot be given with it") && err.contains("--lr") && err.contains("--data"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&done).unwrap();
}

#[test]
fn sampling_a_saved_run_reproduces_its_sample_and_refuses_bad_prompts() {
    let out = tmp("sample");
    run(Some(tiny(Variant::SigmaReparam, 10)), &opts(&out)).unwrap();
    let saved = std::fs::read_to_string(out.join("sample.txt")).unwrap();
    assert_eq!(saved.chars().count(), 20);
    // The run's seed (0), its temperature and the default prompt give the same text.
    let again = tasks::lm::sample_from(&out, "\n", 20, 0.8, 0).unwrap();
    assert_eq!(again, saved);
    let other = tasks::lm::sample_from(&out, "ROMEO:", 50, 0.8, 1).unwrap();
    assert_eq!(other.chars().count(), 50);
    // Through the binary: the prompt, then the generated text.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_lm"))
        .args(["sample", "--from", out.to_str().unwrap(), "--chars", "20"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("\n{saved}\n"));
    let err = tasks::lm::sample_from(&out, "ROMEO: ☃", 5, 0.8, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 are not among them"), "{err}");
    let err = tasks::lm::sample_from(&out, "A", 5, 0.0, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "--temperature must be finite and > 0, got 0");
    // The library function checks what the program cannot get wrong.
    let saved = tasks::train::load_run::<Lm>(&out).unwrap();
    let other_vocab = tasks::text::Vocab::from_text("ab");
    let mut rng = tasks::train::seeded(0, 3);
    let err = tasks::lm::sample(&saved.model, &other_vocab, &[0], 5, 0.8, &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a vocabulary of 2 characters for a model of"),
        "{err}"
    );
    let missing = out.join("nothing-here");
    let err = tasks::lm::sample_from(&missing, "A", 5, 0.8, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("there is no checkpoint.safetensors here"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn every_optimizer_and_schedule_trains() {
    use tasks::train::{OptimizerKind, Schedule};
    for (optimizer, lr, schedule) in [
        (OptimizerKind::Adamw, 3e-3, Schedule::Constant),
        (OptimizerKind::Sgd, 0.3, Schedule::Cosine),
        (OptimizerKind::Lars, 3.0, Schedule::Cosine),
    ] {
        let out = tmp(&format!("optim-{optimizer:?}"));
        let cfg = train_with(tiny(Variant::SigmaReparam, 40), |t| {
            t.optimizer = optimizer;
            t.lr = lr;
            t.schedule = schedule;
            t.warmup = 0;
        });
        let summary = run(Some(cfg), &opts(&out)).unwrap();
        let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
        let first = recs[0]["loss"].as_f64().unwrap();
        let last = summary.train_loss;
        assert!(last < first - 0.5, "{optimizer:?}: loss {first} → {last}");
        let lrs: Vec<f64> = recs.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
        match schedule {
            Schedule::Constant => assert!(lrs.iter().all(|&x| x == lr), "{lrs:?}"),
            Schedule::Cosine => assert!(lrs[lrs.len() - 1] < lr * 0.11, "{lrs:?}"),
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn a_directory_holding_a_run_is_refused_unless_overwrite() {
    let out = stopped_run("overwrite");
    let metrics = std::fs::read(out.join(METRICS_FILE)).unwrap();
    let checkpoint = std::fs::read(out.join(CHECKPOINT_FILE)).unwrap();
    let err = config_error(tiny(Variant::PreLn, 10), &out);
    let dir = out.display();
    assert_eq!(
        err,
        format!(
            "{dir} already holds a run; continue it with --resume {dir}, or pass --overwrite \
             to start over (its files will be replaced)"
        )
    );
    assert_eq!(std::fs::read(out.join(METRICS_FILE)).unwrap(), metrics);
    assert_eq!(
        std::fs::read(out.join(CHECKPOINT_FILE)).unwrap(),
        checkpoint
    );
    // A replacing run that ends before its first checkpoint leaves none of the old run's
    // behind to resume.
    let diverging = train_with(tiny(Variant::PreLn, 10), |t| t.max_loss = 1e-6);
    let overwrite = RunOptions {
        overwrite: true,
        ..opts(&out)
    };
    let replaced = run(Some(diverging), &overwrite).unwrap();
    assert!(matches!(replaced.outcome, Outcome::Diverged { .. }));
    assert!(!out.join(CHECKPOINT_FILE).exists());
    let again = run(Some(tiny(Variant::PreLn, 10)), &overwrite).unwrap();
    assert_eq!(again.steps, 10);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_diverging_sigma_reparam_run_is_an_outcome_not_an_error() {
    // An infinite step makes the weights non-finite; the next forward's power step refuses
    // them, which ends the run as diverged like a NaN loss.
    let out = tmp("sigma-diverge");
    let cfg = train_with(tiny(Variant::SigmaReparam, 20), |t| {
        t.lr = 1e39;
        t.warmup = 0;
    });
    let summary = run(Some(cfg), &opts(&out)).unwrap();
    let (step, reason, first_non_finite) = diverged(&summary);
    assert!(*step <= 3, "diverged at step {step}");
    assert!(reason.contains("power step"), "{reason}");
    assert!(first_non_finite.is_some(), "{reason}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_checkpoint_with_tampered_settings_is_refused_on_resume() {
    let out = stopped_run("tampered");
    let path = out.join(CHECKPOINT_FILE);
    let mut ckpt = Checkpoint::load(&path).unwrap();
    assert!(ckpt.config.contains(r#""eval_every":10"#));
    ckpt.config = ckpt
        .config
        .replace(r#""eval_every":10"#, r#""eval_every":0"#);
    ckpt.save(&path).unwrap();
    let err = run(
        None,
        &RunOptions {
            resume: true,
            ..opts(&out)
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "--eval-every must be at least 1");
    std::fs::remove_dir_all(&out).unwrap();
}
