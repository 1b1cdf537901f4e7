//! End-to-end checks of the `lm` trainer on a slice of real text (the first 100,000
//! characters of the Shakespeare corpus, in `tests/data`).

use nn::Checkpoint;
use std::path::{Path, PathBuf};
use tasks::lm::{run, RunConfig, RunOptions, Variant, CHECKPOINT_FILE, METRICS_FILE};
use tasks::Error;

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/shakespeare-slice.txt")
}

/// A model small enough to train in seconds.
fn tiny(variant: Variant, steps: usize) -> RunConfig {
    RunConfig {
        steps,
        batch_size: 8,
        seq_len: 32,
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        log_every: 5,
        eval_every: 10,
        eval_batches: 2,
        checkpoint_every: 10,
        sample_chars: 20,
        ..RunConfig::defaults(variant, slice())
    }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        verbose: false,
        plots: false,
        fetch: false,
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn short_run_on_real_text_lowers_the_loss() {
    let out = tmp("learn");
    let cfg = RunConfig {
        lr: 3e-3,
        warmup: 10,
        ..tiny(Variant::PreLn, 200)
    };
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
    let last_val = summary.val_loss.unwrap();
    // Uniform over the ~60 characters is ln 60 ≈ 4.1 nats; character statistics alone give
    // about 3.3.
    assert!(first > 3.8, "initial loss {first}");
    assert!(last_val < 2.8, "validation loss {last_val} after 200 steps");
    assert_eq!(summary.sample.chars().count(), 20);
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
    let cfg = RunConfig {
        dropout: 0.1,
        ..tiny(Variant::SigmaReparam, 30)
    };
    let (a, b) = (tmp("whole"), tmp("split"));
    run(Some(cfg.clone()), &opts(&a)).unwrap();
    let stopped = run(
        Some(cfg),
        &RunOptions {
            stop_after: Some(15),
            ..opts(&b)
        },
    )
    .unwrap();
    assert_eq!(stopped.steps, 15);
    let resumed = run(
        None,
        &RunOptions {
            resume: true,
            ..opts(&b)
        },
    )
    .unwrap();
    assert_eq!(resumed.steps, 30);
    let (ma, mb) = (
        std::fs::read_to_string(a.join(METRICS_FILE)).unwrap(),
        std::fs::read_to_string(b.join(METRICS_FILE)).unwrap(),
    );
    assert_eq!(ma.lines().count(), 7);
    assert!(ma == mb, "metrics differ:\n{ma}\nvs\n{mb}");
    let (ca, cb) = (
        Checkpoint::load(&a.join(CHECKPOINT_FILE)).unwrap(),
        Checkpoint::load(&b.join(CHECKPOINT_FILE)).unwrap(),
    );
    assert_eq!((ca.step, &ca.config), (cb.step, &cb.config));
    assert_eq!(ca.tensors.len(), cb.tensors.len());
    for (k, t) in &ca.tensors {
        let same = t.to_vec_f64().unwrap() == cb.tensors[k].to_vec_f64().unwrap();
        assert!(same, "final {k} differs");
    }
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
        Some(tiny(Variant::PreLn, 1).with_data(&missing)),
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
    let err = run(Some(tiny(Variant::PreLn, 1).with_data(&bad)), &opts(&out)).unwrap_err();
    assert!(matches!(err, Error::NotUtf8 { offset: 43, .. }), "{err}");
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn divergence_stops_with_the_step_named() {
    let out = tmp("diverge");
    let cfg = RunConfig {
        lr: 1e30,
        warmup: 0,
        grad_clip: 1e30,
        ..tiny(Variant::PreLn, 20)
    };
    let err = run(Some(cfg), &opts(&out)).unwrap_err();
    match &err {
        Error::NonFinite { step, .. } => assert!(*step <= 5, "{err}"),
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("at step"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

fn config_error(cfg: RunConfig, out: &Path) -> String {
    match run(Some(cfg), &opts(out)) {
        Err(e @ Error::Config(_)) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn invalid_settings_are_refused_naming_the_flag_before_anything_is_written() {
    let out = tmp("invalid");
    let base = tiny(Variant::PreLn, 10);
    let cases: Vec<(RunConfig, &str)> = vec![
        (
            RunConfig {
                temperature: 0.0,
                ..base.clone()
            },
            "--temperature must be finite and > 0, got 0",
        ),
        (
            RunConfig {
                temperature: f64::NAN,
                ..base.clone()
            },
            "--temperature must be finite and > 0, got NaN",
        ),
        (
            RunConfig {
                grad_clip: -1.0,
                ..base.clone()
            },
            "--grad-clip must be finite and > 0, got -1",
        ),
        (
            RunConfig {
                lr: 0.0,
                ..base.clone()
            },
            "--lr must be finite and > 0, got 0",
        ),
        (
            RunConfig {
                weight_decay: -0.1,
                ..base.clone()
            },
            "--weight-decay must be finite and >= 0, got -0.1",
        ),
        (
            RunConfig {
                emb_std: 0.0,
                ..base.clone()
            },
            "--emb-std must be finite and > 0, got 0",
        ),
        (
            RunConfig {
                gamma_lr_scale: f64::INFINITY,
                ..base.clone()
            },
            "--gamma-lr-scale must be finite and >= 0, got inf",
        ),
        (
            RunConfig {
                residual_scale: f64::NAN,
                ..base.clone()
            },
            "--residual-scale must be finite and > 0, got NaN",
        ),
        (
            RunConfig {
                n_layers: 0,
                ..base.clone()
            },
            "--n-layers must be at least 1",
        ),
    ];
    for (cfg, expected) in cases {
        assert_eq!(config_error(cfg, &out), expected);
    }
    if std::fs::read_to_string("/proc/meminfo").is_ok() {
        let err = config_error(
            RunConfig {
                seq_len: 100_000,
                ..base.clone()
            },
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
    let err = run(Some(tiny(Variant::PreLn, 10).with_data(&dir)), &opts(&out))
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
    assert_eq!(again.val_loss, done.val_loss);
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), summary);

    // A stopped run whose metrics log went missing cannot be resumed faithfully.
    let stopped = tmp("resume-no-log");
    run(
        Some(tiny(Variant::PreLn, 10)),
        &RunOptions {
            stop_after: Some(5),
            ..opts(&stopped)
        },
    )
    .unwrap();
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
