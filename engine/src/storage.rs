//! Backing memory of tensors, an enum over backends so no generics leak to users.

use crate::{DType, Device};

/// Host memory of one dtype, always dense; a [`crate::Layout`] maps logical indices into it.
#[derive(Debug, Clone)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl CpuStorage {
    /// Element type of the data.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    /// Number of elements held.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
        }
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Memory on some device. A CUDA variant is added beside `Cpu` by the CUDA backend; the
/// public tensor API does not change.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Storage {
    Cpu(CpuStorage),
}

impl Storage {
    /// Device of the memory.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// Element type of the memory.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }
}
