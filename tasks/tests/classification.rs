//! End-to-end checks of the `classification` trainer on a slice of real images: the first
//! 1,000 training and 300 test images of Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT
//! license), in `tests/data/fashion-mnist-slice` (images gzipped, labels plain, so both IDX
//! encodings are read).

use engine::{no_grad, Tensor};
use nn::{Checkpoint, ModuleExt};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tasks::classification::{Classification, ClassificationConfig};
use tasks::images::load_dir;
use tasks::train::{
    load_run, Outcome, RunOptions, RunSummary, Task, TrainConfig, Variant, CHECKPOINT_FILE,
    METRICS_FILE, SUMMARY_FILE,
};
use tasks::vision::VisionArgs;
use tasks::Error;

mod common;
use common::opts;

/// A run's settings: the shared ones and `classification`'s.
type Cfg = (TrainConfig, ClassificationConfig);

fn run(cfg: Option<Cfg>, opts: &RunOptions) -> tasks::Result<RunSummary> {
    tasks::train::run::<Classification>(cfg, opts)
}

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fashion-mnist-slice")
}

/// A ViT small enough to train in seconds: 7×7 patches, d_model 32, 2 layers; 800 training
/// and 200 validation images.
fn tiny(variant: Variant, steps: usize) -> Cfg {
    (
        TrainConfig {
            steps,
            warmup: 0,
            log_every: 5,
            eval_every: 10,
            checkpoint_every: 10,
            ..Classification::defaults(variant)
        },
        {
            let mut c = ClassificationConfig::new(slice());
            c.batch_size = 32;
            c.vision = VisionArgs {
                patch_size: 7,
                d_model: 32,
                n_layers: 2,
                n_heads: 2,
                val_images: 200,
                ..c.vision
            };
            c
        },
    )
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("classification", name)
}

fn summary_json(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap()).unwrap()
}

#[test]
fn short_run_on_real_images_beats_chance_and_writes_every_output() {
    for variant in [Variant::PreLn, Variant::SigmaReparam] {
        let out = tmp(&format!("learn-{}", variant.name()));
        let summary = run(
            Some(tiny(variant, 120)),
            &RunOptions {
                plots: true,
                ..opts(&out)
            },
        )
        .unwrap();
        assert_eq!(summary.outcome, Outcome::Completed);
        // 10 classes: chance is 10%. 120 steps of 32 images (about 5 epochs of 800) reach
        // four times that on validation and test images alike.
        for key in ["val_accuracy", "test_accuracy", "train_accuracy"] {
            let acc = summary.metric(key).unwrap();
            assert!(acc > 0.4, "{variant:?}: {key} {acc}");
        }
        let recs = tasks::metrics::read_records(&out.join(METRICS_FILE)).unwrap();
        let first = recs[0]["loss"].as_f64().unwrap();
        assert!((first - 10f64.ln()).abs() < 0.5, "initial loss {first}");
        let last = &recs[recs.len() - 1];
        assert_eq!(last["entropy_layer"].as_array().unwrap().len(), 2);
        assert_eq!(last["entropy"][0].as_array().unwrap().len(), 2, "per head");
        let sigma = last["sigma"].as_object().unwrap();
        assert_eq!(
            sigma.contains_key("patch_embed.proj"),
            variant == Variant::SigmaReparam
        );
        // summary.json holds the test figures beside the validation ones.
        let s = summary_json(&out);
        assert_eq!(s["test_accuracy"].as_f64(), summary.metric("test_accuracy"));
        assert!(s["test_loss"].as_f64().unwrap() > 0.0);
        // The confusion matrix counts the 300 test images; its accuracy is the summary's.
        let c: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("confusion.json")).unwrap())
                .unwrap();
        let counts = c["counts"].as_array().unwrap();
        assert_eq!(counts.len(), 10);
        let total: u64 = counts
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 300);
        assert_eq!(c["accuracy"].as_f64(), summary.metric("test_accuracy"));
        assert_eq!(c["classes"][9], "Ankle boot", "{c}");
        for f in ["loss.svg", "accuracy.svg", "entropy.svg", "confusion.svg"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        assert_eq!(
            out.join("sigma_gamma.svg").exists(),
            variant == Variant::SigmaReparam
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted_bit_for_bit() {
    // σReparam (power-iteration state), dropout and augmentation (RNG states) and the epoch
    // order (25 steps of 32 over 800 images cross epoch boundaries; the stop at step 13 is
    // mid-epoch) must all resume exactly.
    let (train, cls) = tiny(Variant::SigmaReparam, 30);
    let mut cls = cls;
    cls.vision.dropout = 0.1;
    let cfg = (train, cls);
    let (a, b, whole, resumed) =
        common::whole_and_resumed::<Classification>("classification", cfg, 13);
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&a, "confusion.json"), read(&b, "confusion.json"));
    assert_eq!(
        whole.metric("test_accuracy"),
        resumed.metric("test_accuracy")
    );
    // A saved run loads for inference: its model gives the run's test accuracy.
    let loaded = load_run::<Classification>(&a).unwrap();
    let (_, test) = load_dir(&slice(), 10).unwrap();
    let idx: Vec<usize> = (0..test.len()).collect();
    let (x, labels) = test.batch(&idx, None);
    let x = Tensor::from_vec(x, &[test.len(), 1, 28, 28]).unwrap();
    loaded.model.eval();
    let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let logits = no_grad(|| loaded.model.forward(&x, rng)).unwrap();
    let hits = logits
        .argmax(1)
        .unwrap()
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    assert_eq!(Some(hits as f64 / 300.0), whole.metric("test_accuracy"));
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

fn config_error(cfg: Cfg, out: &Path) -> String {
    match run(Some(cfg), &opts(out)) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("expected an error, got {s:?}"),
    }
}

#[test]
fn bad_settings_and_data_are_refused_naming_the_flag_or_file() {
    let out = tmp("bad");
    let with = |f: &dyn Fn(&mut ClassificationConfig)| {
        let (t, mut c) = tiny(Variant::PreLn, 5);
        f(&mut c);
        (t, c)
    };
    for (cfg, want) in [
        (
            with(&|c| c.vision.patch_size = 5),
            "--patch-size 5 must divide the image height and width (28×28)",
        ),
        (
            with(&|c| c.crop_pad = usize::MAX),
            "must be smaller than the image sides (28×28)",
        ),
        (
            with(&|c| c.vision.n_heads = 3),
            "--n-heads 3 must divide --d-model 32",
        ),
        (with(&|c| c.vision.val_images = 1000), "--val-images 1000"),
        (
            with(&|c| c.vision.train_images = 900),
            "--train-images 900 exceeds the 800",
        ),
        (with(&|c| c.batch_size = 0), "--batch-size"),
        (
            with(&|c| c.vision.n_classes = 1),
            "--n-classes must be in 2..=256",
        ),
        // Fashion-MNIST's labels go up to 9.
        (with(&|c| c.vision.n_classes = 5), "label"),
        (
            with(&|c| c.vision.dropout = 1.0),
            "--dropout must be in [0, 1)",
        ),
    ] {
        let err = config_error(cfg, &out);
        assert!(err.contains(want), "want {want:?} in: {err}");
        assert!(
            !out.join(CHECKPOINT_FILE).exists(),
            "{err}: wrote a checkpoint"
        );
    }
    // A missing directory names it and what to pass.
    let missing = out.join("nowhere");
    let err = config_error(with(&|c| c.vision.data = missing.clone()), &out);
    assert!(err.contains("nowhere") && err.contains("--data"), "{err}");
    // A directory without IDX files lists what it looked for.
    std::fs::create_dir_all(&missing).unwrap();
    let err = config_error(with(&|c| c.vision.data = missing.clone()), &out);
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn resuming_with_other_images_is_refused() {
    let out = tmp("other-data");
    run(
        Some(tiny(Variant::PreLn, 10)),
        &RunOptions {
            stop_after: Some(5),
            ..opts(&out)
        },
    )
    .unwrap();
    // The same files, but 14×14 images (each original row pair cut in half).
    let other = tmp("other-images");
    std::fs::create_dir_all(&other).unwrap();
    for split in ["train", "t10k"] {
        let labels = format!("{split}-labels-idx1-ubyte");
        std::fs::copy(slice().join(&labels), other.join(&labels)).unwrap();
        let src =
            tasks::idx::read_idx(&slice().join(format!("{split}-images-idx3-ubyte.gz"))).unwrap();
        let n = src.dims[0];
        let mut bytes = vec![0, 0, 8, 3];
        for d in [n, 14, 14] {
            bytes.extend((d as u32).to_be_bytes());
        }
        bytes.extend(&src.data[..n * 196]);
        std::fs::write(other.join(format!("{split}-images-idx3-ubyte")), bytes).unwrap();
    }
    let mut saved = Checkpoint::load(&out.join(CHECKPOINT_FILE)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&saved.config).unwrap();
    config["task"]["data"] = serde_json::json!(other);
    saved.config = config.to_string();
    saved.save(&out.join(CHECKPOINT_FILE)).unwrap();
    let err = run(
        None,
        &RunOptions {
            resume: true,
            ..opts(&out)
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Data(_)) && err.to_string().contains("14×14"),
        "{err}"
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}
