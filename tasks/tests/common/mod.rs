//! What the task programs' end-to-end tests share.

use std::path::{Path, PathBuf};
use tasks::train::RunOptions;

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
