//! A CTC speech recognizer as in the speech model of Zhai et al. (ICML 2023; apple/
//! ml-sigma-reparam `speech/`): log-mel frames → a strided 1-D convolution into `2·d_model`
//! channels and a GLU → sinusoidal positions → a bidirectional [`Trunk`] over the padded
//! batch (padding hidden from attention) → a linear output layer → per-frame
//! log-probabilities of the characters and the CTC blank (Graves et al. 2006).

use crate::module::join;
use crate::{
    Conv1d, Error, LinearLayer, Module, NormPlacement, Result, TensorRole, Trunk, TrunkConfig,
};
use engine::{DType, Reduction, Tensor};
use std::sync::Mutex;

/// Hyper-parameters of an [`AsrTransformer`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AsrConfig {
    /// Features per input frame (80 log-mel bins).
    pub n_features: usize,
    /// Output classes, the CTC blank (class 0) included.
    pub n_classes: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads per block (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width of each MLP in units of `d_model`.
    pub mlp_ratio: usize,
    /// Dropout on attention probabilities and residual branches.
    pub dropout: f64,
    /// LayerNorm placement.
    pub norm: NormPlacement,
    /// Whether the trunk's linear layers and the output layer are σReparam (the
    /// convolution is not, as in the official speech model).
    pub sigma_reparam: bool,
    /// σReparam's γ₀ is σ(W₀) (`false`) or 1 (`true`, the official speech model's).
    pub gamma_one: bool,
    /// Frames of the convolution's kernel (7 in the paper's model).
    pub conv_kernel: usize,
    /// Stride of the convolution in frames (3 in the paper's model: 10 ms frames become
    /// 30 ms steps).
    pub conv_stride: usize,
}

impl AsrConfig {
    /// The model's trunk: bidirectional attention, the other fields copied from this
    /// configuration, residual branches unscaled.
    pub fn trunk(&self) -> TrunkConfig {
        TrunkConfig {
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            mlp_ratio: self.mlp_ratio,
            causal: false,
            dropout: self.dropout,
            norm: self.norm,
            sigma_reparam: self.sigma_reparam,
            gamma_one: self.gamma_one,
            residual_scale: 1.0,
        }
    }
}

/// The CTC transformer: features `[batch, frames, n_features]` (each utterance padded with
/// zero frames to the longest) → [`Conv1d`] (kernel `conv_kernel`, stride `conv_stride`,
/// `conv_kernel / 2` zero frames of padding each side) into `2·d_model` channels → GLU over
/// the channels → plus sinusoidal positions (Vaswani et al. 2017, §3.5) → [`Trunk`]
/// (bidirectional, each utterance's padding hidden) → linear layer → log-softmax over
/// `n_classes`.
///
/// Parameter names: `conv.{weight,bias}`, `blocks.{i}.…`, `ln_f.…` (pre-LN),
/// `head.{weight,bias}` (plus `gamma`/`u`/`v`/`sigma` for σReparam).
#[derive(Debug)]
pub struct AsrTransformer {
    config: AsrConfig,
    conv: Conv1d,
    trunk: Trunk,
    head: LinearLayer,
    positions: Mutex<Option<Tensor>>,
}

impl AsrTransformer {
    /// A model per `config` with weights drawn from `rng` in the order convolution, trunk,
    /// output layer.
    ///
    /// Errors with [`Error::Config`] on zero sizes, `n_classes < 2` and as
    /// [`Trunk::new`].
    pub fn new(config: AsrConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        let c = &config;
        if [c.n_features, c.d_model, c.conv_kernel, c.conv_stride].contains(&0) || c.n_classes < 2 {
            return Err(Error::Config(format!(
                "AsrTransformer: sizes must be positive and n_classes ≥ 2 (the blank and one \
                 label); got {config:?}"
            )));
        }
        let opts = engine::Conv1dOptions {
            stride: c.conv_stride,
            padding: c.conv_kernel / 2,
            dilation: 1,
        };
        let conv = Conv1d::new(
            c.n_features,
            2 * c.d_model,
            c.conv_kernel,
            opts,
            true,
            dtype,
            rng,
        )?;
        let trunk = Trunk::new(c.trunk(), dtype, rng)?;
        let kind = c.trunk().linear_kind();
        let head = LinearLayer::new(kind, c.d_model, c.n_classes, true, dtype, rng)?;
        Ok(AsrTransformer {
            config,
            conv,
            trunk,
            head,
            positions: Mutex::new(None),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AsrConfig {
        &self.config
    }

    /// Output steps for an utterance of `frames` input frames: `⌈frames / conv_stride⌉`
    /// for an odd kernel (the convolution's output length).
    pub fn output_len(&self, frames: usize) -> usize {
        self.conv.output_len(frames)
    }

    /// Sinusoidal positions `[t, d_model]`: `sin(p / 10000^(2i/d))` at even channels
    /// `2i`, `cos` of the same at odd ones; cached for the last `t`.
    fn positions(&self, t: usize, dtype: DType) -> Result<Tensor> {
        let mut slot = self.positions.lock().expect("positions lock poisoned");
        if let Some(p) = slot
            .as_ref()
            .filter(|p| p.shape()[0] == t && p.dtype() == dtype)
        {
            return Ok(p.clone());
        }
        let d = self.config.d_model;
        let v: Vec<f64> = (0..t * d)
            .map(|i| {
                let (pos, ch) = ((i / d) as f64, i % d);
                let angle = pos / 10000f64.powf((ch - ch % 2) as f64 / d as f64);
                if ch % 2 == 0 {
                    angle.sin()
                } else {
                    angle.cos()
                }
            })
            .collect();
        let p = Tensor::from_f64s(&v, &[t, d], dtype)?;
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Per-step log-probabilities `[t', batch, n_classes]` (time first, the layout of
    /// [`Tensor::ctc_loss`]) of `features` `[batch, frames, n_features]`, where utterance
    /// `i` is its first `frames[i]` frames (the rest zero padding, hidden from attention)
    /// and `t' = output_len(frames)`; utterance `i`'s steps are the first
    /// `output_len(frames[i])`. `rng` drives dropout.
    ///
    /// Errors with [`Error::Config`] naming the shape unless `features` is
    /// `[batch, frames, n_features]` with one length in `1..=frames` per utterance.
    pub fn forward(
        &self,
        features: &Tensor,
        frames: &[usize],
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        let c = &self.config;
        let shape_ok = matches!(*features.shape(), [b, t, f] if b == frames.len()
            && f == c.n_features
            && frames.iter().all(|&n| (1..=t).contains(&n)));
        if !shape_ok {
            return Err(Error::Config(format!(
                "AsrTransformer: needs features [batch, frames, {}] and one length in \
                 1..=frames per utterance, got shape {:?} and lengths {frames:?}",
                c.n_features,
                features.shape()
            )));
        }
        // The convolution's output is a channels-first view of dense [batch, t', 2·d]
        // storage: back to time-major at no cost, then the GLU over the last dimension.
        let x = self.conv.forward(&features.permute(&[0, 2, 1])?)?;
        let x = x.permute(&[0, 2, 1])?.glu(2)?;
        let t = x.shape()[1];
        let x = x.add(&self.positions(t, x.dtype())?)?;
        let steps: Vec<usize> = frames.iter().map(|&n| self.output_len(n)).collect();
        let x = self.trunk.forward_padded(&x, Some(&steps), rng)?;
        Ok(self.head.forward(&x)?.log_softmax(2)?.permute(&[1, 0, 2])?)
    }

    /// The CTC loss (blank 0; PyTorch's `mean`: each utterance's loss divided by its
    /// target length, then averaged; impossible alignments count 0) of `log_probs` from
    /// [`AsrTransformer::forward`] of utterances of `frames` frames against their
    /// `targets`, label ids in `1..n_classes`.
    pub fn loss(
        &self,
        log_probs: &Tensor,
        frames: &[usize],
        targets: &[Vec<usize>],
    ) -> Result<Tensor> {
        let steps: Vec<usize> = frames.iter().map(|&n| self.output_len(n)).collect();
        let lengths: Vec<usize> = targets.iter().map(Vec::len).collect();
        let flat: Vec<usize> = targets.concat();
        Ok(log_probs.ctc_loss(&flat, &steps, &lengths, 0, Reduction::Mean, true)?)
    }

    /// The trunk.
    pub fn trunk(&self) -> &Trunk {
        &self.trunk
    }

    /// Every linear layer with its full name (`blocks.0.attn.q`, …, `head`).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out = self.trunk.linears();
        out.push(("head".into(), &self.head));
        out
    }

    /// Turn attention-entropy recording on or off in every block.
    pub fn set_record_entropy(&self, on: bool) {
        self.trunk.set_record_entropy(on);
    }
}

/// Greedy CTC decoding of one utterance: the most probable class at each of its
/// `log_probs` rows (`[steps, n_classes]`, row-major), repeats merged, blanks (class 0)
/// dropped.
pub fn greedy_decode(log_probs: &[f32], n_classes: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = 0;
    for row in log_probs.chunks(n_classes) {
        let best = row
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            )
            .0;
        if best != 0 && best != prev {
            out.push(best);
        }
        prev = best;
    }
    out
}

impl Module for AsrTransformer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.conv.visit(&join(prefix, "conv"), f);
        self.trunk.visit(prefix, f);
        self.head.visit(&join(prefix, "head"), f);
    }

    fn set_training(&self, training: bool) {
        self.trunk.set_training(training);
        self.head.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use engine::gradcheck;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny(norm: NormPlacement, sigma_reparam: bool) -> AsrConfig {
        AsrConfig {
            n_features: 3,
            n_classes: 4,
            d_model: 4,
            n_layers: 2,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            norm,
            sigma_reparam,
            gamma_one: true,
            conv_kernel: 3,
            conv_stride: 2,
        }
    }

    #[test]
    fn shapes_lengths_and_parameter_names() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let m = AsrTransformer::new(tiny(NormPlacement::Pre, true), DType::F64, &mut rng).unwrap();
        assert_eq!(
            (1..=6).map(|n| m.output_len(n)).collect::<Vec<_>>(),
            [1, 1, 2, 2, 3, 3]
        );
        let x = Tensor::randn(&[2, 5, 3], 0.0, 1.0, DType::F64, &mut rng);
        let lp = m.forward(&x, &[5, 2], &mut rng).unwrap();
        assert_eq!(lp.shape(), [3, 2, 4]);
        // Log-probabilities: each row's exponentials sum to 1.
        for row in lp.to_vec_f64().unwrap().chunks(4) {
            let total: f64 = row.iter().map(|v| v.exp()).sum();
            assert!((total - 1.0).abs() < 1e-12);
        }
        let names: Vec<String> = m.named_parameters().into_iter().map(|p| p.0).collect();
        assert_eq!(names[..2], ["conv.weight", "conv.bias"]);
        assert_eq!(names.last().unwrap(), "head.bias");
        assert_eq!(m.linears().len(), 13);
        for (shape, lens) in [
            (&[2, 5, 2][..], &[5, 2][..]),
            (&[2, 5, 3], &[5]),
            (&[2, 5, 3], &[6, 1]),
            (&[2, 5, 3], &[0, 5]),
        ] {
            let x = Tensor::zeros(shape, DType::F64);
            let err = m.forward(&x, lens, &mut rng).unwrap_err().to_string();
            assert!(err.contains("AsrTransformer"), "{shape:?} {lens:?}: {err}");
        }
    }

    /// An utterance padded with zero frames in a batch gives, at its real steps, what it
    /// gives alone (zero padding is also what the convolution pads with, and attention
    /// hides the padded steps).
    #[test]
    fn padding_does_not_change_an_utterance() {
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let m = AsrTransformer::new(tiny(norm, true), DType::F64, &mut rng).unwrap();
            m.eval();
            let short = Tensor::randn(&[1, 5, 3], 0.0, 1.0, DType::F64, &mut rng);
            let long = Tensor::randn(&[1, 9, 3], 0.0, 1.0, DType::F64, &mut rng);
            let padded = Tensor::cat(&[&short, &Tensor::zeros(&[1, 4, 3], DType::F64)], 1).unwrap();
            let batch = Tensor::cat(&[&padded, &long], 0).unwrap();
            let alone = m
                .forward(&short, &[5], &mut rng)
                .unwrap()
                .to_vec_f64()
                .unwrap();
            let both = m
                .forward(&batch, &[5, 9], &mut rng)
                .unwrap()
                .to_vec_f64()
                .unwrap();
            // [t', batch, classes]: utterance 0's 3 steps are rows (s, 0).
            for s in 0..3 {
                for c in 0..4 {
                    let (a, b) = (alone[s * 4 + c], both[(s * 2) * 4 + c]);
                    assert!((a - b).abs() < 1e-12, "{norm:?} step {s}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn gradcheck_of_the_forward_through_the_features() {
        for (norm, sigma) in [(NormPlacement::Pre, false), (NormPlacement::None, true)] {
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let m = AsrTransformer::new(tiny(norm, sigma), DType::F64, &mut rng).unwrap();
            m.eval();
            let x = Tensor::randn(&[2, 5, 3], 0.0, 1.0, DType::F64, &mut rng)
                .requires_grad_(true)
                .unwrap();
            let report = gradcheck(
                |x| {
                    Ok(m.forward(&x[0], &[5, 3], &mut ChaCha8Rng::seed_from_u64(0))
                        .unwrap())
                },
                &[x],
            )
            .unwrap();
            assert_eq!(report.checked, 30);
        }
    }

    #[test]
    fn greedy_decoding_merges_repeats_and_drops_blanks() {
        // Best classes per step: 1 1 0 1 2 2 0 0 3.
        let best = [1, 1, 0, 1, 2, 2, 0, 0, 3];
        let rows: Vec<f32> = best
            .iter()
            .flat_map(|&b| (0..4).map(move |c| if c == b { -0.1 } else { -3.0 }))
            .collect();
        assert_eq!(greedy_decode(&rows, 4), [1, 1, 2, 3]);
        assert!(greedy_decode(&[], 4).is_empty());
    }
}
