//! Where a tensor's data lives.

use std::fmt;

/// The device of a tensor. Every tensor carries one; ops refuse operands on different
/// devices with [`crate::Error::DeviceMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, multithreaded kernels (rayon + the `gemm` crate).
    #[default]
    Cpu,
    /// A CUDA device by ordinal (backend provided by the `cuda` crate).
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
