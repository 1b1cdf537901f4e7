//! The one error type of the engine.

use crate::{DType, Device};

/// Every fallible engine operation returns this error. Shape errors name the op and the
/// shapes involved so that a message alone locates the fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two shapes that must agree (or broadcast) do not.
    #[error("{op}: incompatible shapes {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
    },
    /// A dimension index is out of range for the tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of shape {shape:?}")]
    DimOutOfRange {
        op: &'static str,
        dim: usize,
        shape: Vec<usize>,
    },
    /// Operands have different element types.
    #[error("{op}: dtype mismatch, {lhs:?} vs {rhs:?}")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },
    /// Operands live on different devices.
    #[error("{op}: device mismatch, {lhs} vs {rhs}")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },
    /// The operation is not implemented for this device.
    #[error("{op}: not supported on device {device}")]
    UnsupportedDevice { op: &'static str, device: Device },
    /// An argument is invalid for a reason other than shape or dtype.
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    /// An op met NaN or infinite values it cannot compute with (e.g. σReparam's power step
    /// on a non-finite weight): a training run that reaches it has diverged.
    #[error("{op}: {msg}")]
    NonFinite { op: &'static str, msg: String },
    /// [`crate::gradcheck()`] found an analytic gradient entry that disagrees with the
    /// finite difference.
    #[error("gradcheck: input {input}, element {index}: analytic {analytic} vs numeric {numeric}")]
    GradientMismatch {
        input: usize,
        index: usize,
        analytic: f64,
        numeric: f64,
    },
    /// Reverse-mode differentiation cannot proceed.
    #[error("backward: {0}")]
    Backward(String),
}

/// Result alias used throughout the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}
