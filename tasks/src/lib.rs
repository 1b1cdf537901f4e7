//! The task programs' library: the training harness they share ([`train`]), the tasks
//! ([`lm`], [`classification`], [`ssl`], [`asr`]), text, image and audio data, SimCLR views
//! and the linear probe, JSONL metrics, confusion matrices and SVG plots.
pub mod asr;
pub mod audio;
pub mod classification;
pub mod confusion;
pub mod fetch;
pub mod idx;
pub mod images;
pub mod lm;
pub mod metrics;
pub mod plot;
pub mod probe;
pub mod ssl;
pub mod text;
pub mod train;
pub mod views;
pub mod vision;

use std::path::PathBuf;

/// Errors of the task programs; every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data file does not exist.
    #[error("data file {path} not found; {hint}")]
    DataMissing { path: PathBuf, hint: String },
    /// The data file is not UTF-8 text.
    #[error("{path} is not valid UTF-8 text (first invalid byte at byte {offset}); pass a UTF-8 text file")]
    NotUtf8 { path: PathBuf, offset: usize },
    /// A setting is invalid; the message names the flag and the accepted range.
    #[error("{0}")]
    Config(String),
    /// The data cannot be used (empty, too short, ...).
    #[error("data: {0}")]
    Data(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("plot {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
    /// A layer, optimizer or checkpoint failed.
    #[error(transparent)]
    Nn(#[from] nn::Error),
    /// An engine operation failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

impl Error {
    /// Whether this is an engine op refusing NaN or infinite values
    /// ([`engine::Error::NonFinite`]): what a diverging run meets.
    pub fn is_non_finite(&self) -> bool {
        matches!(
            self,
            Error::Engine(engine::Error::NonFinite { .. })
                | Error::Nn(nn::Error::Engine(engine::Error::NonFinite { .. }))
        )
    }
}

/// Result alias of the task programs.
pub type Result<T> = std::result::Result<T, Error>;

/// Keep freed memory in the process: training allocates and frees the same large buffers
/// every step, and glibc would otherwise return them to the kernel and fault them back in
/// (about 8% of a step).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
