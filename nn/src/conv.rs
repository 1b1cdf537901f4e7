//! The 1-D convolution layer (PyTorch `nn.Conv1d`, without groups), as in the front-end of
//! a speech model: frames `[batch, channels, time]` to `[batch, out_channels, time']`.

use crate::linear::init_weight_bias;
use crate::module::join;
use crate::{Error, Module, Result, TensorRole};
use engine::{Conv1dOptions, DType, Tensor};

/// A 1-D convolution `y = conv1d(x, W, b)` with zero padding on both sides.
///
/// Parameters: `weight` `[out_channels, in_channels, kernel_size]`, `bias`
/// `[out_channels]` (optional), initialized as PyTorch does (uniform in `[−k, k)`,
/// `k = 1/√(in_channels · kernel_size)`).
#[derive(Debug)]
pub struct Conv1d {
    weight: Tensor,
    bias: Option<Tensor>,
    opts: Conv1dOptions,
}

impl Conv1d {
    /// A layer from `in_channels` to `out_channels` with a kernel of `kernel_size` frames,
    /// moved `opts.stride` frames at a time over the input padded with `opts.padding` zero
    /// frames on each side, taps `opts.dilation` frames apart; weights drawn from `rng`.
    ///
    /// Errors with [`Error::Config`] when a size, the stride or the dilation is 0.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        opts: Conv1dOptions,
        bias: bool,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        if [
            in_channels,
            out_channels,
            kernel_size,
            opts.stride,
            opts.dilation,
        ]
        .contains(&0)
        {
            return Err(Error::Config(format!(
                "Conv1d: in_channels ({in_channels}), out_channels ({out_channels}), \
                 kernel_size ({kernel_size}), stride and dilation must be positive; got {opts:?}"
            )));
        }
        let shape = [out_channels, in_channels, kernel_size];
        let (weight, bias) = init_weight_bias(&shape, bias, dtype, rng)?;
        Ok(Conv1d { weight, bias, opts })
    }

    /// Output frames for `frames` input frames:
    /// `⌊(frames + 2·padding − dilation·(kernel_size − 1) − 1) / stride⌋ + 1` (0 when the
    /// padded input is shorter than the kernel's span), PyTorch's formula.
    pub fn output_len(&self, frames: usize) -> usize {
        let Conv1dOptions {
            stride,
            padding,
            dilation,
        } = self.opts;
        let span = dilation * (self.weight.shape()[2] - 1) + 1;
        match (frames + 2 * padding).checked_sub(span) {
            Some(n) => n / stride + 1,
            None => 0,
        }
    }

    /// `x` `[batch, in_channels, time]` to `[batch, out_channels, output_len(time)]`.
    /// Errors (naming the shapes) when `x` is not rank 3 with `in_channels` channels or is
    /// shorter than the kernel.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.conv1d(&self.weight, self.bias.as_ref(), self.opts)?)
    }

    /// The weight `[out_channels, in_channels, kernel_size]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv1d {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        f(join(prefix, "weight"), &self.weight, TensorRole::Parameter);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b, TensorRole::Parameter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use rand::SeedableRng;

    #[test]
    fn shapes_names_and_initialization_follow_pytorch() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let opts = |stride, padding| Conv1dOptions {
            stride,
            padding,
            dilation: 1,
        };
        let conv = Conv1d::new(4, 6, 7, opts(3, 3), true, DType::F64, &mut rng).unwrap();
        let names: Vec<String> = conv.named_parameters().into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["weight", "bias"]);
        let bound = 1.0 / 28f64.sqrt();
        let w = conv.weight().to_vec_f64().unwrap();
        assert!(w.iter().all(|v| v.abs() <= bound));
        assert!(w.iter().any(|v| v.abs() > bound / 2.0));
        for (frames, want) in [(1, 1), (3, 1), (4, 2), (300, 100), (301, 101)] {
            assert_eq!(conv.output_len(frames), want, "{frames} frames");
            let x = Tensor::zeros(&[2, 4, frames], DType::F64);
            assert_eq!(conv.forward(&x).unwrap().shape(), [2, 6, want]);
        }
        let unpadded = Conv1d::new(4, 6, 7, opts(3, 0), false, DType::F64, &mut rng).unwrap();
        assert_eq!(unpadded.output_len(6), 0);
        assert!(unpadded
            .forward(&Tensor::zeros(&[1, 4, 6], DType::F64))
            .is_err());
        assert!(Conv1d::new(4, 6, 0, opts(3, 0), false, DType::F64, &mut rng).is_err());
        let dilated = Conv1dOptions {
            dilation: 2,
            ..opts(1, 0)
        };
        let conv = Conv1d::new(4, 6, 3, dilated, false, DType::F64, &mut rng).unwrap();
        assert_eq!(conv.output_len(5), 1);
        assert_eq!(conv.output_len(4), 0);
    }
}
