//! What the task programs' end-to-end tests share.

use nn::Checkpoint;
use std::path::{Path, PathBuf};
use tasks::train::{run, RunOptions, RunSummary, Task, TrainConfig, CHECKPOINT_FILE, METRICS_FILE};

/// Options of a quiet run into `out`: no plots, no fetching, nothing resumed or overwritten.
pub fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        verbose: false,
        plots: false,
        fetch: false,
        overwrite: false,
    }
}

/// A fresh (removed if present) temporary directory for test `name` of `program`, unique to
/// this process.
pub fn tmp(program: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{program}-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Train `cfg` twice for `program`: whole into one fresh directory, and stopped after
/// `stop` steps then resumed into another. Asserts the stop and the end steps, identical
/// `metrics.jsonl` and identical final checkpoints (step, settings, every tensor); returns
/// both directories and both summaries, for the caller's further checks and clean-up.
pub fn whole_and_resumed<T: Task>(
    program: &str,
    cfg: (TrainConfig, T::Config),
    stop: usize,
) -> (PathBuf, PathBuf, RunSummary, RunSummary) {
    let steps = cfg.0.steps;
    let (a, b) = (tmp(program, "whole"), tmp(program, "split"));
    let whole = run::<T>(Some(cfg.clone()), &opts(&a)).unwrap();
    let stopped = run::<T>(
        Some(cfg),
        &RunOptions {
            stop_after: Some(stop),
            ..opts(&b)
        },
    )
    .unwrap();
    assert_eq!(stopped.steps, stop);
    let resumed = run::<T>(
        None,
        &RunOptions {
            resume: true,
            ..opts(&b)
        },
    )
    .unwrap();
    assert_eq!(resumed.steps, steps);
    let read = |d: &Path| std::fs::read_to_string(d.join(METRICS_FILE)).unwrap();
    let (ma, mb) = (read(&a), read(&b));
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
    (a, b, whole, resumed)
}
