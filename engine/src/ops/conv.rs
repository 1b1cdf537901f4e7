//! One-dimensional convolution (PyTorch `F.conv1d`) and the gated linear unit (`F.glu`).
//!
//! `conv1d` is im2col followed by [`Tensor::linear`]: the input is unfolded into one row of
//! `C_in·K` taps per output position (zeros where a tap falls in the padding), and the
//! product kernels do the multiply-adds of the forward and of both gradient products. The
//! unfold is its own op, whose backward folds the taps' gradient back (a scatter-add, summed
//! per input row in a fixed order, so the result does not depend on the thread count).

use crate::cpu::{dense, fill_rows, zeros};
use crate::dtype::with_dtype;
use crate::layout::Layout;
use crate::ops::unary::sigmoid;
use crate::{Error, Float, Result, Tensor};

/// Stride, zero padding and dilation of [`Tensor::conv1d`]; the default is PyTorch's
/// (stride 1, no padding, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dOptions {
    /// Step between consecutive output positions, in input samples (at least 1).
    pub stride: usize,
    /// Zeros added at both ends of the input, in samples.
    pub padding: usize,
    /// Spacing between consecutive kernel taps, in input samples (at least 1).
    pub dilation: usize,
}

impl Default for Conv1dOptions {
    fn default() -> Self {
        Conv1dOptions {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

/// Where the taps of an unfold read: an input of `len` samples, `kernel` taps per output
/// position, `out_len` output positions.
#[derive(Clone, Copy, Debug)]
struct Taps {
    len: usize,
    kernel: usize,
    out_len: usize,
    opts: Conv1dOptions,
}

impl Taps {
    /// The input sample read by tap `k` of output position `t`, or `None` in the padding.
    #[inline(always)]
    fn source(&self, t: usize, k: usize) -> Option<usize> {
        (t * self.opts.stride + k * self.opts.dilation)
            .checked_sub(self.opts.padding)
            .filter(|&p| p < self.len)
    }
}

/// `cols[n, t, c·K + k] = x[n, c, source(t, k)]` (0 in the padding) for `x` `[N, C, L]`
/// read through its layout (any strides): `[N, L_out, C·K]`, dense.
fn unfold_forward<T: Float>(x: &[T], l: &Layout, taps: Taps) -> Vec<T> {
    let (batch, channels) = (l.shape()[0], l.shape()[1]);
    let (sn, sc, sl) = (l.strides()[0], l.strides()[1], l.strides()[2]);
    let row_len = channels * taps.kernel;
    let mut cols = zeros(batch * taps.out_len * row_len);
    fill_rows(&mut cols, row_len, |r, dst| {
        let (n, t) = (r / taps.out_len, r % taps.out_len);
        for (c, dst) in dst.chunks_exact_mut(taps.kernel).enumerate() {
            let base = l.offset() + n * sn + c * sc;
            for (k, d) in dst.iter_mut().enumerate() {
                if let Some(p) = taps.source(t, k) {
                    *d = x[base + p * sl];
                }
            }
        }
    });
    cols
}

/// The adjoint of [`unfold_forward`] (col2im): `gx[n, c, p] = Σ g[n, t, c·K + k]` over the
/// taps `(t, k)` that read sample `p`, for dense `g` `[N, L_out, C·K]`; `[N, C, L]`, dense.
/// Each row `(n, c)` of `gx` is summed by one call, in increasing `t` then `k`.
fn unfold_backward<T: Float>(g: &[T], batch: usize, channels: usize, taps: Taps) -> Vec<T> {
    let row_len = channels * taps.kernel;
    let mut gx = zeros(batch * channels * taps.len);
    fill_rows(&mut gx, taps.len, |r, dst| {
        let (n, c) = (r / channels, r % channels);
        for t in 0..taps.out_len {
            let src = &g[(n * taps.out_len + t) * row_len + c * taps.kernel..][..taps.kernel];
            for (k, &v) in src.iter().enumerate() {
                if let Some(p) = taps.source(t, k) {
                    dst[p] += v;
                }
            }
        }
    });
    gx
}

/// `y = a ⊙ σ(b)` for dense `x` viewed as `[outer, 2, half]` (`a = x[:, 0]`, `b = x[:, 1]`),
/// giving `[outer, half]`; with `with_grad` also `[σ(b), a·σ(b)·(1 − σ(b))]` as
/// `[outer, 2, half]`, the derivatives with respect to `a` and `b`.
fn glu_forward<T: Float>(
    x: &[T],
    outer: usize,
    half: usize,
    with_grad: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let part = |o: usize, j: usize| &x[(2 * o + j) * half..][..half];
    let mut y = zeros(outer * half);
    if !with_grad {
        fill_rows(&mut y, half, |o, dst| {
            for ((d, &a), &b) in dst.iter_mut().zip(part(o, 0)).zip(part(o, 1)) {
                *d = a * sigmoid(b);
            }
        });
        return (y, None);
    }
    let mut dy = zeros(2 * outer * half);
    fill_rows(&mut dy, 2 * half, |o, dst| {
        let (da, db) = dst.split_at_mut(half);
        for (((da, db), &a), &b) in da.iter_mut().zip(db).zip(part(o, 0)).zip(part(o, 1)) {
            let s = sigmoid(b);
            *da = s;
            *db = a * s * (T::one() - s);
        }
    });
    fill_rows(&mut y, half, |o, dst| {
        for ((d, &a), &s) in dst.iter_mut().zip(part(o, 0)).zip(&dy[2 * o * half..]) {
            *d = a * s;
        }
    });
    (y, Some(dy))
}

impl Tensor {
    /// 1-D cross-correlation (PyTorch `F.conv1d`, `groups = 1`): for `self` `[N, C_in, L]`,
    /// `weight` `[C_out, C_in, K]` and an optional `bias` `[C_out]`,
    /// `y[n, o, t] = b[o] + Σ_{c, k} w[o, c, k] · x[n, c, t·stride + k·dilation − padding]`
    /// with zeros outside the input, giving `[N, C_out, L_out]` where
    /// `L_out = ⌊(L + 2·padding − dilation·(K − 1) − 1) / stride⌋ + 1`.
    ///
    /// Computed as an unfold of the input into `[N, L_out, C_in·K]` (im2col; any strided
    /// view of the input is read in place) and [`Tensor::linear`] with the weight viewed as
    /// `[C_out, C_in·K]`; the result is a transposed view of that product's dense
    /// `[N, L_out, C_out]`, so `.transpose(1, 2)` of it is dense (time-major, as a
    /// transformer after a convolutional front-end wants it). Backward: the product's, then
    /// the unfold's adjoint (a scatter-add of the taps' gradients).
    ///
    /// Errors with [`Error::InvalidArgument`] naming the shapes or values when `self` or
    /// `weight` is not 3-D, their `C_in` differ, `K` is 0, `bias` is not `[C_out]`, `stride`
    /// or `dilation` is 0, or the padded input is shorter than the kernel's span
    /// `dilation·(K − 1) + 1`; and on dtype or device mismatches.
    pub fn conv1d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv1dOptions,
    ) -> Result<Tensor> {
        const OP: &str = "conv1d";
        let (&[_, c_in, len], &[c_out, w_in, kernel]) = (self.shape(), weight.shape()) else {
            return Err(Error::invalid(
                OP,
                format!(
                    "needs input [N, C_in, L] and weight [C_out, C_in, K], got shapes {:?} and {:?}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        };
        self.check_same(OP, weight)?;
        if w_in != c_in || kernel == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "input {:?} has {c_in} channels; weight {:?} must be [C_out, {c_in}, K] with K >= 1",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        if let Some(b) = bias {
            b.check_same(OP, weight)?;
            if b.shape() != [c_out] {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "bias has shape {:?}, a weight of shape {:?} needs [{c_out}]",
                        b.shape(),
                        weight.shape()
                    ),
                ));
            }
        }
        let Conv1dOptions {
            stride,
            padding,
            dilation,
        } = opts;
        if stride == 0 || dilation == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "stride and dilation must be >= 1, got stride {stride}, dilation {dilation}"
                ),
            ));
        }
        let span = dilation.saturating_mul(kernel - 1).saturating_add(1);
        let padded = padding.saturating_mul(2).saturating_add(len);
        if padded < span {
            return Err(Error::invalid(
                OP,
                format!(
                    "input {:?} is too short for the kernel: length {len} with padding {padding} on both sides is below the span {span} of {kernel} taps at dilation {dilation}",
                    self.shape()
                ),
            ));
        }
        let taps = Taps {
            len,
            kernel,
            out_len: (padded - span) / stride + 1,
            opts,
        };
        let cols = self.unfold1d(taps)?;
        let w2 = weight.reshape(&[c_out, c_in * kernel])?;
        cols.linear(&w2, bias)?.transpose(1, 2)
    }

    /// The unfold (im2col) of `self` `[N, C, L]` into `[N, L_out, C·K]` by `taps`; recorded,
    /// with the scatter-add adjoint as its backward.
    fn unfold1d(&self, taps: Taps) -> Result<Tensor> {
        const OP: &str = "unfold1d";
        let (batch, channels) = (self.shape()[0], self.shape()[1]);
        let cols_shape = [batch, taps.out_len, channels * taps.kernel];
        let cols = with_dtype!(self.dtype(), T => {
            let v = self.with_cpu::<T, _>(OP, |d, l| unfold_forward(d, l, taps))?;
            Tensor::from_vec(v, &cols_shape)?
        });
        let x_shape = self.shape().to_vec();
        Ok(cols.record(&[self], OP, move |g| {
            with_dtype!(g.dtype(), T => {
                let v = g.with_cpu::<T, _>(OP, |d, l| unfold_backward(&dense(d, l), batch, channels, taps))?;
                Ok(vec![Some(Tensor::from_vec(v, &x_shape)?)])
            })
        }))
    }

    /// Gated linear unit (Dauphin et al. 2017, "Language Modeling with Gated Convolutional
    /// Networks"; PyTorch `F.glu`): `self` is split along `dim` into halves `a` (first) and
    /// `b` (second), and the result is `a ⊙ σ(b)`, of `self`'s shape with `dim` halved. One
    /// op: the forward also keeps `σ(b)` and `a·σ(b)·(1 − σ(b))` when a gradient will be
    /// needed, so the backward is one product. The values are those of `narrow`, `sigmoid`
    /// and `mul`, bit for bit.
    ///
    /// Errors with [`Error::DimOutOfRange`] for a bad `dim` and with
    /// [`Error::InvalidArgument`] naming the shape when the size of `dim` is odd.
    pub fn glu(&self, dim: usize) -> Result<Tensor> {
        const OP: &str = "glu";
        self.check_dim(OP, dim)?;
        let size = self.shape()[dim];
        if !size.is_multiple_of(2) {
            return Err(Error::invalid(
                OP,
                format!(
                    "dim {dim} of shape {:?} has odd size {size}; it must split into two halves",
                    self.shape()
                ),
            ));
        }
        let outer: usize = self.shape()[..dim].iter().product();
        let half = size / 2 * self.shape()[dim + 1..].iter().product::<usize>();
        let mut y_shape = self.shape().to_vec();
        y_shape[dim] = size / 2;
        let with_grad = crate::is_grad_enabled() && self.requires_grad();
        let (y, dy) = with_dtype!(self.dtype(), T => {
            let (y, d) = self.with_cpu::<T, _>(OP, |d, l| glu_forward(&dense(d, l), outer, half, with_grad))?;
            let d = d.map(|d| Tensor::from_vec(d, &[outer, 2, half])).transpose()?;
            (Tensor::from_vec(y, &y_shape)?, d)
        });
        let Some(dy) = dy else {
            return Ok(y);
        };
        let x_shape = self.shape().to_vec();
        Ok(y.record(&[self], OP, move |g| {
            let g = g.reshape(&[outer, 1, half])?;
            Ok(vec![Some(g.mul(&dy)?.reshape(&x_shape)?)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::on_threads;
    use crate::{gradcheck, DType};
    use rand::SeedableRng;

    fn opts(stride: usize, padding: usize, dilation: usize) -> Conv1dOptions {
        Conv1dOptions {
            stride,
            padding,
            dilation,
        }
    }

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_f64s(v, shape, DType::F64).unwrap()
    }

    /// The definition of `F.conv1d` as a direct loop over `[N, C_in, L]` and
    /// `[C_out, C_in, K]` in f64, for comparison.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: Conv1dOptions) -> Vec<f64> {
        let (&[n, c_in, len], &[c_out, _, k]) = (x.shape(), w.shape()) else {
            unreachable!()
        };
        let (xv, wv) = (x.to_vec_f64().unwrap(), w.to_vec_f64().unwrap());
        let bv = b.map_or(vec![0.0; c_out], |b| b.to_vec_f64().unwrap());
        let out_len = (len + 2 * o.padding - o.dilation * (k - 1) - 1) / o.stride + 1;
        let mut y = vec![];
        for (ni, oi, ti) in (0..n)
            .flat_map(|ni| (0..c_out).flat_map(move |oi| (0..out_len).map(move |ti| (ni, oi, ti))))
        {
            let mut s = bv[oi];
            for ci in 0..c_in {
                for ki in 0..k {
                    let p = (ti * o.stride + ki * o.dilation) as isize - o.padding as isize;
                    if (0..len as isize).contains(&p) {
                        s +=
                            wv[(oi * c_in + ci) * k + ki] * xv[(ni * c_in + ci) * len + p as usize];
                    }
                }
            }
            y.push(s);
        }
        y
    }

    /// A length-5 input and a 3-tap kernel, computed by hand: valid, padded with stride 2,
    /// dilated, with a bias; and two channels into two outputs.
    #[test]
    fn conv1d_small_values_by_hand() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1, 1, 5]);
        let w = t(&[1.0, 2.0, 3.0], &[1, 1, 3]);
        let b = t(&[0.5], &[1]);
        let run = |bias: Option<&Tensor>, o| {
            let y = x.conv1d(&w, bias, o).unwrap();
            (y.shape().to_vec(), y.to_vec_f64().unwrap())
        };
        // 1·x[t] + 2·x[t+1] + 3·x[t+2].
        assert_eq!(
            run(None, Conv1dOptions::default()),
            (vec![1, 1, 3], vec![14.0, 20.0, 26.0])
        );
        // Positions (−1, 0, 1), (1, 2, 3), (3, 4, 5): 0 + 2 + 6, 2 + 6 + 12, 4 + 10 + 0.
        assert_eq!(
            run(None, opts(2, 1, 1)),
            (vec![1, 1, 3], vec![8.0, 20.0, 14.0])
        );
        // Positions 0, 2, 4: 1 + 6 + 15, plus the bias.
        assert_eq!(run(Some(&b), opts(1, 0, 2)), (vec![1, 1, 1], vec![22.5]));

        // Two channels x₀ = [1, 2, 3], x₁ = [1, 0, −1] into two outputs with 2 taps:
        // y₀ = x₀[t] + x₀[t+1] = 3, 5; y₁ = x₀[t+1] − x₁[t+1] + 10 = 12, 14.
        let x = t(&[1.0, 2.0, 3.0, 1.0, 0.0, -1.0], &[1, 2, 3]);
        let w = t(&[1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0], &[2, 2, 2]);
        let b = t(&[0.0, 10.0], &[2]);
        let y = x.conv1d(&w, Some(&b), Conv1dOptions::default()).unwrap();
        assert_eq!(y.shape(), [1, 2, 2]);
        assert_eq!(y.to_vec_f64().unwrap(), [3.0, 5.0, 12.0, 14.0]);
    }

    /// Output shapes follow `L_out = ⌊(L + 2p − d(K − 1) − 1)/s⌋ + 1` (evaluated here in
    /// floating point), and the values match the direct loop, over strides, paddings,
    /// dilations and kernel sizes, down to an output of length 1.
    #[test]
    fn conv1d_shapes_and_values_match_the_definition() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (len, k, s, p, d) in [
            (600, 7, 3, 0, 1),
            (20, 1, 1, 0, 1),
            (20, 3, 3, 3, 2),
            (13, 7, 2, 3, 1),
            (9, 5, 4, 0, 2),
            (7, 7, 1, 0, 1),
            (1, 3, 1, 1, 1),
            (2, 4, 5, 1, 1),
        ] {
            let x = Tensor::randn(&[2, 3, len], 0.0, 1.0, DType::F64, &mut rng);
            let w = Tensor::randn(&[4, 3, k], 0.0, 1.0, DType::F64, &mut rng);
            let b = Tensor::randn(&[4], 0.0, 1.0, DType::F64, &mut rng);
            let y = x.conv1d(&w, Some(&b), opts(s, p, d)).unwrap();
            let want_len = ((len + 2 * p) as f64 - (d * (k - 1)) as f64 - 1.0) / s as f64;
            assert_eq!(y.shape(), [2, 4, want_len.floor() as usize + 1]);
            let want = reference(&x, &w, Some(&b), opts(s, p, d));
            for (a, b) in y.to_vec_f64().unwrap().iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "L {len} K {k} s {s} p {p} d {d}");
            }
        }
    }

    /// Finite-difference gradients of input, weight and bias over strides 1 and 3,
    /// paddings 0 and 3, dilations 1 and 2, kernels of 1, 3 and 7 taps, with and without a
    /// bias, and on a transposed view of a `[N, L, C]` input.
    #[test]
    fn conv1d_gradcheck() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for (k, s, p, d, bias, transposed) in [
            (3, 1, 0, 1, true, false),
            (3, 3, 3, 2, false, false),
            (7, 1, 3, 1, true, true),
            (7, 3, 0, 1, false, true),
            (1, 3, 3, 1, true, false),
            (3, 1, 3, 2, true, true),
        ] {
            let (n, c_in, len, c_out) = (2, 3, 14, 2);
            let x_shape = if transposed {
                [n, len, c_in]
            } else {
                [n, c_in, len]
            };
            let x = Tensor::randn(&x_shape, 0.0, 1.0, DType::F64, &mut rng);
            let w = Tensor::randn(&[c_out, c_in, k], 0.0, 1.0, DType::F64, &mut rng);
            let b = Tensor::randn(&[c_out], 0.0, 1.0, DType::F64, &mut rng);
            let o = opts(s, p, d);
            let input = |x: &Tensor| {
                if transposed {
                    x.transpose(1, 2)
                } else {
                    Ok(x.clone())
                }
            };
            let report = if bias {
                gradcheck(|t| input(&t[0])?.conv1d(&t[1], Some(&t[2]), o), &[x, w, b])
            } else {
                gradcheck(|t| input(&t[0])?.conv1d(&t[1], None, o), &[x, w])
            };
            let report = report.unwrap_or_else(|e| panic!("K {k} {o:?} bias {bias}: {e}"));
            assert!(report.checked > 0);
        }
    }

    /// Output and every gradient are bit-identical on 1, 2 and 3 threads, for a product
    /// large enough to be split into blocks and an unfold large enough to run in parallel.
    #[test]
    fn conv1d_does_not_depend_on_the_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = Tensor::randn(&[4, 20, 600], 0.0, 1.0, DType::F32, &mut rng);
        let w = Tensor::randn(&[48, 20, 7], 0.0, 0.1, DType::F32, &mut rng);
        let b = Tensor::randn(&[48], 0.0, 1.0, DType::F32, &mut rng);
        let g = Tensor::randn(&[4, 48, 198], 0.0, 1.0, DType::F32, &mut rng);
        let run = || {
            let leaves: Vec<Tensor> = [&x, &w, &b]
                .iter()
                .map(|t| t.detach().requires_grad_(true).unwrap())
                .collect();
            let y = leaves[0]
                .conv1d(&leaves[1], Some(&leaves[2]), opts(3, 0, 1))
                .unwrap();
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![y.to_vec::<f32>().unwrap()];
            out.extend(
                leaves
                    .iter()
                    .map(|l| l.grad().unwrap().to_vec::<f32>().unwrap()),
            );
            out
        };
        let one = on_threads(1, run);
        for threads in [2, 3] {
            assert!(one == on_threads(threads, run), "{threads} threads");
        }
    }

    /// Each bad argument is an error naming the shapes or values.
    #[test]
    fn conv1d_errors() {
        let x = Tensor::zeros(&[2, 3, 10], DType::F64);
        let w = Tensor::zeros(&[4, 3, 3], DType::F64);
        let def = Conv1dOptions::default();
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = err(x.reshape(&[6, 10]).unwrap().conv1d(&w, None, def));
        assert!(e.contains("[N, C_in, L]") && e.contains("[6, 10]"), "{e}");
        let e = err(x.conv1d(&w.reshape(&[4, 9]).unwrap(), None, def));
        assert!(e.contains("[4, 9]"), "{e}");
        let e = err(x.conv1d(&Tensor::zeros(&[4, 2, 3], DType::F64), None, def));
        assert!(e.contains("3 channels") && e.contains("[4, 2, 3]"), "{e}");
        let e = err(x.conv1d(&Tensor::zeros(&[4, 3, 0], DType::F64), None, def));
        assert!(e.contains("K >= 1"), "{e}");
        let e = err(x.conv1d(&w, Some(&Tensor::zeros(&[3], DType::F64)), def));
        assert!(
            e.contains("bias has shape [3]") && e.contains("needs [4]"),
            "{e}"
        );
        for o in [opts(0, 0, 1), opts(1, 0, 0)] {
            let e = err(x.conv1d(&w, None, o));
            assert!(e.contains("must be >= 1"), "{e}");
        }
        // Span 2·(7 − 1) + 1 = 13 > 10 + 2·1; with padding 2 it fits (one output).
        let w7 = Tensor::zeros(&[4, 3, 7], DType::F64);
        let e = err(x.conv1d(&w7, None, opts(1, 1, 2)));
        assert!(e.contains("too short") && e.contains("span 13"), "{e}");
        assert_eq!(
            x.conv1d(&w7, None, opts(1, 2, 2)).unwrap().shape(),
            [2, 4, 2]
        );
        assert!(matches!(
            x.conv1d(&Tensor::zeros(&[4, 3, 3], DType::F32), None, def),
            Err(Error::DTypeMismatch { .. })
        ));
    }

    /// `glu` by hand along the last dim and dim 0: `a·σ(b)` with σ(0) = 1/2 and
    /// σ(±ln 3) = 3/4, 1/4.
    #[test]
    fn glu_values_by_hand() {
        let l3 = 3f64.ln();
        let x = t(&[2.0, -4.0, 0.0, l3, 1.0, 8.0, -l3, 0.0], &[2, 4]);
        let y = x.glu(1).unwrap();
        assert_eq!(y.shape(), [2, 2]);
        let want = [1.0, -3.0, 0.25, 4.0];
        for (a, b) in y.to_vec_f64().unwrap().iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{y:?}");
        }
        // Dim 0: a = [2, −4, 0, ln 3], b = [1, 8, −ln 3, 0].
        let y = x.glu(0).unwrap();
        assert_eq!(y.shape(), [1, 4]);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want = [2.0 * s(1.0), -4.0 * s(8.0), 0.0, l3 * 0.5];
        for (a, b) in y.to_vec_f64().unwrap().iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{y:?}");
        }
    }

    /// The values of `narrow`, `sigmoid` and `mul`, bit for bit, along every dim of a 3-D
    /// tensor and of a transposed view, with and without grad mode, in f32 and f64.
    #[test]
    fn glu_matches_narrow_sigmoid_mul() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for dtype in [DType::F32, DType::F64] {
            let base = Tensor::randn(&[4, 6, 8], 0.0, 3.0, dtype, &mut rng);
            let leaf = base.detach().requires_grad_(true).unwrap();
            for transposed in [false, true] {
                let view = |t: &Tensor| {
                    if transposed {
                        t.transpose(0, 2).unwrap()
                    } else {
                        t.clone()
                    }
                };
                let (x, x_grad) = (view(&base), view(&leaf));
                assert!(x_grad.requires_grad());
                for dim in 0..3 {
                    let h = x.shape()[dim] / 2;
                    let gate = x.narrow(dim, h, h).unwrap().sigmoid().unwrap();
                    let want = x.narrow(dim, 0, h).unwrap().mul(&gate).unwrap();
                    let want = want.to_vec_f64().unwrap();
                    assert_eq!(x.glu(dim).unwrap().to_vec_f64().unwrap(), want);
                    assert_eq!(x_grad.glu(dim).unwrap().to_vec_f64().unwrap(), want);
                }
            }
        }
    }

    /// Finite-difference gradients along the first, a middle and the last dim, and on a
    /// transposed view.
    #[test]
    fn glu_gradcheck() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x = Tensor::randn(&[2, 4, 6], 0.0, 2.0, DType::F64, &mut rng);
        for dim in 0..3 {
            gradcheck(|t| t[0].glu(dim), std::slice::from_ref(&x)).unwrap();
        }
        gradcheck(|t| t[0].transpose(1, 2)?.glu(2), &[x]).unwrap();
    }

    /// Output and gradient bit-identical on 1 and 3 threads for a tensor large enough for
    /// the parallel path.
    #[test]
    fn glu_does_not_depend_on_the_thread_count() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        let x = Tensor::randn(&[8, 50, 192], 0.0, 2.0, DType::F32, &mut rng);
        let g = Tensor::randn(&[8, 50, 96], 0.0, 1.0, DType::F32, &mut rng);
        let run = || {
            let leaf = x.detach().requires_grad_(true).unwrap();
            let y = leaf.glu(2).unwrap();
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            (
                y.to_vec::<f32>().unwrap(),
                leaf.grad().unwrap().to_vec::<f32>().unwrap(),
            )
        };
        assert!(on_threads(1, run) == on_threads(3, run));
    }

    #[test]
    fn glu_errors() {
        let x = Tensor::zeros(&[2, 3], DType::F64);
        let e = x.glu(1).unwrap_err().to_string();
        assert!(e.contains("odd size 3") && e.contains("[2, 3]"), "{e}");
        assert!(matches!(x.glu(2), Err(Error::DimOutOfRange { .. })));
    }
}
