//! End-to-end checks of the `ssl` trainer (SimCLR, then the linear probe) on the slice of
//! real images in `tests/data/fashion-mnist-slice` (the first 1,000 training and 300 test
//! images of Fashion-MNIST, Xiao, Rasul and Vollgraf 2017, MIT license).

use std::path::{Path, PathBuf};
use tasks::classification::{Classification, ClassificationConfig};
use tasks::ssl::{probe_run, ProbeArgs, Ssl, SslConfig};
use tasks::train::{load_run, run, Outcome, Task, TrainConfig, Variant, METRICS_FILE};
use tasks::vision::VisionArgs;

mod common;
use common::opts;

/// A run's settings: the shared ones and `ssl`'s.
type Cfg = (TrainConfig, SslConfig);

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fashion-mnist-slice")
}

/// A ViT small enough to train in seconds (7×7 patches, d_model 32, 2 layers), batches of
/// 32 images (64 views) from 800 training images, 200 held out, a short probe.
fn tiny(variant: Variant, steps: usize) -> Cfg {
    let mut c = SslConfig::new(slice());
    c.batch_size = 32;
    c.proj_hidden = 64;
    c.proj_dim = 32;
    c.probe_steps = 100;
    c.vision = VisionArgs {
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        val_images: 200,
        ..c.vision
    };
    (
        TrainConfig {
            steps,
            warmup: 0,
            log_every: 5,
            eval_every: 20,
            checkpoint_every: 20,
            ..Ssl::defaults(variant)
        },
        c,
    )
}

/// A short pretraining lowers the contrastive loss (the first logged training loss against
/// the mean of the last five; the validation views are fixed, so their loss compares
/// directly), the probes reach well above chance (10%) on 300 test images, and every
/// output is written.
#[test]
fn short_pretraining_lowers_the_loss_and_the_probe_beats_chance() {
    for variant in [Variant::PreLn, Variant::SigmaReparam] {
        let out = common::tmp("ssl", &format!("learn-{}", variant.name()));
        let summary = run::<Ssl>(Some(tiny(variant, 60)), &opts(&out)).unwrap();
        assert_eq!(summary.outcome, Outcome::Completed);
        let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
        let losses: Vec<f64> = recs.iter().filter_map(|r| r["loss"].as_f64()).collect();
        // 64 views: a uniform softmax over the 63 others gives ln 63 = 4.14 nats; an
        // untrained encoder already maps a view nearer its positive than chance, a little.
        let uniform = 63f64.ln();
        assert!(
            losses[0] < uniform + 0.05 && losses[0] > uniform - 0.6,
            "initial loss {}",
            losses[0]
        );
        let tail = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(tail < losses[0] - 0.2, "{variant:?}: {losses:?}");
        let val: Vec<f64> = recs.iter().filter_map(|r| r["val_loss"].as_f64()).collect();
        assert!(
            val[val.len() - 1] < val[0] - 0.05,
            "{variant:?}: val {val:?}"
        );
        for key in [
            "test_accuracy",
            "val_accuracy_probe",
            "test_accuracy_raw_pixels",
            "val_accuracy_raw_pixels",
            "test_accuracy_random_encoder",
        ] {
            let acc = summary.metric(key).unwrap();
            assert!(acc > 0.4, "{variant:?}: {key} {acc}");
        }
        let last = &recs[recs.len() - 1];
        assert_eq!(last["entropy_layer"].as_array().unwrap().len(), 2);
        let sigma = last["sigma"].as_object().unwrap();
        assert_eq!(
            sigma.contains_key("projection.proj"),
            variant == Variant::SigmaReparam
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted_bit_for_bit() {
    // σReparam state, the view and dropout RNG streams and the epoch order (25 steps of 32
    // over 800 images cross an epoch boundary; the stop at step 13 is mid-epoch).
    let (train, mut cfg) = tiny(Variant::SigmaReparam, 25);
    cfg.vision.dropout = 0.1;
    cfg.controls = false;
    let (a, b, whole, resumed) = common::whole_and_resumed::<Ssl>("ssl", (train, cfg), 13);
    assert_eq!(
        whole.metric("test_accuracy"),
        resumed.metric("test_accuracy")
    );
    // A saved run loads for inference, without a head, and `ssl probe` on it gives the
    // run's own probe accuracies; other probe settings give other figures.
    let loaded = load_run::<Ssl>(&a).unwrap();
    assert_eq!(loaded.model.encoder().config().n_classes, 0);
    let again = probe_run(&a, ProbeArgs::default(), false, false).unwrap();
    let get = |m: &[(String, f64)], k: &str| m.iter().find(|e| e.0 == k).map(|e| e.1);
    for k in [
        "test_accuracy",
        "val_accuracy_probe",
        "train_accuracy_probe",
    ] {
        assert_eq!(get(&again, k), whole.metric(k), "{k}");
    }
    let short = ProbeArgs {
        probe_steps: Some(3),
        ..ProbeArgs::default()
    };
    let short = probe_run(&a, short, false, false).unwrap();
    assert_ne!(
        get(&short, "train_accuracy_probe"),
        whole.metric("train_accuracy_probe")
    );
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bad_settings_are_refused_naming_the_flag() {
    let out = common::tmp("ssl", "bad");
    let with = |f: &dyn Fn(&mut SslConfig)| {
        let (t, mut c) = tiny(Variant::PreLn, 5);
        f(&mut c);
        (t, c)
    };
    for (cfg, want) in [
        (
            with(&|c| c.temperature = 0.0),
            "--temperature must be finite and > 0",
        ),
        (with(&|c| c.crop_min = 0.0), "--crop-min must be in (0, 1]"),
        (with(&|c| c.jitter = 2.0), "--jitter must be in [0, 1]"),
        (with(&|c| c.proj_dim = 0), "--proj-dim"),
        (with(&|c| c.probe_lr = f64::NAN), "--probe-lr"),
        (
            with(&|c| c.probe_weight_decay = -1.0),
            "--probe-weight-decay must be finite and >= 0",
        ),
        (with(&|c| c.batch_size = 900), "--batch-size 900 exceeds"),
        (
            with(&|c| c.batch_size = 1),
            "--batch-size must be at least 2",
        ),
        (
            with(&|c| c.vision.val_images = 1),
            "--val-images must be at least 2",
        ),
        (
            with(&|c| c.vision.patch_size = 5),
            "--patch-size 5 must divide the image height and width (28×28)",
        ),
    ] {
        match run::<Ssl>(Some(cfg), &opts(&out)) {
            Err(e) => assert!(e.to_string().contains(want), "want {want:?} in: {e}"),
            Ok(s) => panic!("expected an error for {want:?}, got {s:?}"),
        }
    }
    // Another program's run is named as such by `ssl probe` and `--resume`.
    let cls = common::tmp("ssl", "classification-run");
    let mut c = ClassificationConfig::new(slice());
    c.batch_size = 16;
    c.vision = tiny(Variant::PreLn, 2).1.vision;
    let t = TrainConfig {
        steps: 2,
        ..Classification::defaults(Variant::PreLn)
    };
    run::<Classification>(Some((t, c)), &opts(&cls)).unwrap();
    let e = probe_run(&cls, ProbeArgs::default(), false, false).unwrap_err();
    assert!(e.to_string().contains("is not a run of ssl"), "{e}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&cls);
}
