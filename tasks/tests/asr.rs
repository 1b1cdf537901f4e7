//! End-to-end checks of the `asr` trainer on a slice of real and synthetic speech (28 short
//! utterances in `tests/data/speech-slice`, see its README for sources and licenses).

use std::path::{Path, PathBuf};
use tasks::asr::{Asr, AsrArgs};
use tasks::train::{Outcome, RunOptions, RunSummary, Task, TrainConfig, Variant, METRICS_FILE};

mod common;
use common::opts;

/// A run's settings: the shared ones and `asr`'s.
type Cfg = (TrainConfig, AsrArgs);

fn run(cfg: Option<Cfg>, opts: &RunOptions) -> tasks::Result<RunSummary> {
    tasks::train::run::<Asr>(cfg, opts)
}

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech-slice")
}

/// A model small enough to train in seconds: d_model 32, 2 layers; 16 training and 4
/// validation utterances.
fn tiny(variant: Variant, steps: usize) -> Cfg {
    use clap::{Args, FromArgMatches};
    let cmd = AsrArgs::augment_args(clap::Command::new("asr"));
    let defaults = AsrArgs::from_arg_matches(&cmd.get_matches_from(["asr"])).unwrap();
    (
        TrainConfig {
            steps,
            warmup: 0,
            lr: if variant == Variant::SigmaReparam {
                0.1
            } else {
                3e-3
            },
            log_every: 5,
            eval_every: 10,
            checkpoint_every: 10,
            ..Asr::defaults(variant)
        },
        AsrArgs {
            batch_size: 8,
            d_model: 32,
            n_layers: 2,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            val_utterances: 4,
            data: slice(),
            ..defaults
        },
    )
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("asr", name)
}

#[test]
fn short_run_lowers_the_ctc_loss_and_reports_error_rates_per_group() {
    for variant in [Variant::PreLn, Variant::SigmaReparam] {
        let out = tmp(&format!("learn-{}", variant.name()));
        let summary = run(
            Some(tiny(variant, 80)),
            &RunOptions {
                plots: true,
                ..opts(&out)
            },
        )
        .unwrap();
        assert_eq!(summary.outcome, Outcome::Completed);
        let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
        let loss = |i: usize| recs[i]["loss"].as_f64().unwrap();
        let (first, last) = (loss(0), loss(recs.len() - 1));
        // 80 steps over 16 utterances: the CTC loss per character falls by half or more.
        assert!(last < 0.5 * first, "{variant:?}: loss {first} → {last}");
        let entropy = recs[recs.len() - 1]["entropy"].as_array().unwrap();
        assert_eq!(entropy.len(), 2, "per layer");
        for group in ["real", "synthetic", "synthetic_unseen"] {
            let cer = summary.metric(&format!("test_cer_{group}")).unwrap();
            let wer = summary.metric(&format!("test_wer_{group}")).unwrap();
            assert!(
                cer.is_finite() && cer >= 0.0,
                "{variant:?} {group}: CER {cer}"
            );
            assert!(
                wer.is_finite() && wer >= 0.0,
                "{variant:?} {group}: WER {wer}"
            );
        }
        assert!(summary.metric("val_cer").is_some());
        for f in ["loss.svg", "entropy.svg"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted_bit_for_bit() {
    // σReparam (power-iteration state), dropout and SpecAugment (RNG states) must resume
    // exactly.
    let (train, asr) = tiny(Variant::SigmaReparam, 20);
    let cfg = (
        train,
        AsrArgs {
            dropout: 0.1,
            ..asr
        },
    );
    let (a, b, whole, resumed) = common::whole_and_resumed::<Asr>("asr", cfg, 7);
    assert_eq!(
        whole.metric("test_cer_real"),
        resumed.metric("test_cer_real")
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_data_and_settings_are_errors_naming_the_cause() {
    let out = tmp("bad");
    let (train, asr) = tiny(Variant::PreLn, 5);
    let err = |asr: AsrArgs| match run(Some((train.clone(), asr)), &opts(&out)) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("expected an error, got {s:?}"),
    };
    let e = err(AsrArgs {
        val_utterances: 20,
        ..asr.clone()
    });
    assert!(e.contains("--val-utterances 20"), "{e}");
    let empty = tmp("empty-data");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err(AsrArgs {
        data: empty.clone(),
        ..asr.clone()
    });
    assert!(e.contains("manifest.tsv"), "{e}");
    // A manifest row naming a missing WAV file.
    std::fs::write(
        empty.join("manifest.tsv"),
        "path\tsplit\tgroup\ttext\nnone.wav\ttrain\treal\thello\n",
    )
    .unwrap();
    let e = err(AsrArgs {
        data: empty.clone(),
        ..asr
    });
    assert!(e.contains("none.wav"), "{e}");
    std::fs::remove_dir_all(&empty).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}
