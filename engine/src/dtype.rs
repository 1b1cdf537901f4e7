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
    /// `e^x` for `x <= 88`, as the softmax kernels need it (their arguments are `<= 0`).
    /// `f32`: a branch-free polynomial that vectorizes (within 2 ulp of `exp`; 0 below
    /// -87, +inf above 88). `f64`: the libm `exp`.
    fn fast_exp(self) -> Self;
    /// `C ← alpha·A·B + beta·C` through the `gemm` crate (single-threaded), with arbitrary
    /// (row, column) strides given in elements; C is not read when `beta` is 0.
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
    ($t:ty, $variant:ident, $erf:path, $exp:path) => {
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
            #[inline(always)]
            fn fast_exp(self) -> Self {
                $exp(self)
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
                // gemm computes `dst ← α·dst + β·lhs·rhs` (its α and β are the other way
                // round) and never reads `dst` when told not to.
                gemm::gemm(
                    m,
                    n,
                    k,
                    c,
                    csc,
                    rsc,
                    beta != 0.0,
                    a,
                    csa,
                    rsa,
                    b,
                    csb,
                    rsb,
                    beta,
                    alpha,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        }
    };
}

impl_float!(f32, F32, libm::erff, exp_f32);
impl_float!(f64, F64, libm::erf, f64::exp);

/// `e^x` in f32 without branches or calls, so that loops over it vectorize: Cody-Waite
/// reduction `x = n·ln2 + r` with `|r| <= ln2/2`, the Cephes `expf` minimax polynomial for
/// `e^r`, and `2^n` built in the exponent bits. Within 2 ulp of `exp` on `[-87, 88]`;
/// returns 0 below -87 (where `e^x < 1.7e-38`), +inf above 88, NaN for NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in f32
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    // The integer n sits in the low mantissa bits of t (an int conversion that vectorizes).
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e_r = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    let v = e_r * two_n;
    let v = if x < -87.0 { 0.0 } else { v };
    if x > 88.0 {
        f32::INFINITY
    } else {
        v
    }
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn exp_f32_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (super::exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst}");
        assert_eq!(super::exp_f32(0.0), 1.0);
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_f32(-100.0), 0.0);
        assert_eq!(super::exp_f32(100.0), f32::INFINITY);
        assert!(super::exp_f32(f32::NAN).is_nan());
    }
}
