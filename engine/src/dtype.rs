//! Element types: `f32` for training, `f64` for gradient checks.

use crate::storage::CpuStorage;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

/// A floating-point element type the CPU kernels are generic over.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::MulAssign
    + std::fmt::Debug
    + Default
    + Send
    + Sync
    + 'static
{
    /// The [`DType`] tag of this type.
    const DTYPE: DType;
    /// Borrow the data of a CPU storage of this type, `None` for another dtype.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Mutably borrow the data of a CPU storage of this type.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// Wrap a vector into a CPU storage.
    fn wrap(v: Vec<Self>) -> CpuStorage;
    /// Conversion from `f64` (rounding for `f32`).
    fn from_f64_lossy(x: f64) -> Self;
    /// Conversion to `f64`.
    fn to_f64_lossless(self) -> f64;
    /// Gauss error function.
    fn erf(self) -> Self;
    /// `C ← alpha·A·B + beta·C` through matrixmultiply, with arbitrary (row, column) strides
    /// given in elements.
    ///
    /// # Safety
    /// The pointers and strides must describe valid `m×k`, `k×n` and `m×n` matrices; `c`
    /// must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! impl_float {
    ($t:ty, $variant:ident, $gemm:path, $erf:path) => {
        impl Float for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn from_f64_lossy(x: f64) -> Self {
                x as $t
            }
            fn to_f64_lossless(self) -> f64 {
                self as f64
            }
            fn erf(self) -> Self {
                $erf(self)
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
        }
    };
}

impl_float!(f32, F32, matrixmultiply::sgemm, libm::erff);
impl_float!(f64, F64, matrixmultiply::dgemm, libm::erf);

/// Run `$body` with the type alias `$T` bound to the Rust type of `$dtype`.
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;
