//! The error type of `nn`.

/// Errors of layers, optimizers and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An engine operation failed (shape, dtype, device, ...).
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// `load_state_dict` found no entry for a parameter or buffer.
    #[error("state_dict: missing key {0:?}")]
    MissingKey(String),
    /// `load_state_dict` found an entry whose shape differs from the module's tensor.
    #[error("state_dict: {key:?} has shape {found:?}, the module expects {expected:?}")]
    StateShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// `load_state_dict` (strict) found entries the module does not have.
    #[error("state_dict: unexpected keys {0:?}")]
    UnexpectedKeys(Vec<String>),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] crate::CheckpointError),
    /// A configuration value is invalid.
    #[error("{0}")]
    Config(String),
}

/// Result alias of `nn`.
pub type Result<T> = std::result::Result<T, Error>;
