//! The body of a transformer (Vaswani et al. 2017): a stack of blocks of self-attention
//! (causal or bidirectional) and an MLP, each a residual branch, with LayerNorm before the
//! branches (pre-LN, GPT-2 and ViT), after the residual sum (post-LN, the original
//! Transformer) or nowhere, and linear layers plain or σReparam (Zhai et al., ICML 2023).

use crate::module::join;
use crate::{
    Dropout, Error, LayerNorm, LinearKind, LinearLayer, Mlp, Module, Result, SelfAttention,
    TensorRole,
};
use engine::{DType, Tensor};

/// Where a block normalizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormPlacement {
    /// `x + f(LN(x))` for each branch, and a final LayerNorm after the last block.
    Pre,
    /// `LN(x + f(x))` for each branch.
    Post,
    /// `x + f(x)`: no LayerNorm anywhere.
    None,
}

/// Hyper-parameters of a [`Trunk`]. The linear kind is given by two flags, as in
/// [`crate::GptConfig`], so that the configuration serializes; [`TrunkConfig::linear_kind`]
/// turns them into a [`LinearKind`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrunkConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads per block (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width of each MLP in units of `d_model` (4 in GPT and ViT).
    pub mlp_ratio: usize,
    /// Whether query `i` attends only to keys `0..=i` (a decoder) rather than to all keys.
    pub causal: bool,
    /// Dropout on attention probabilities and residual branches.
    pub dropout: f64,
    /// LayerNorm placement.
    pub norm: NormPlacement,
    /// Whether every linear layer (attention and MLP) is σReparam.
    pub sigma_reparam: bool,
    /// σReparam's γ₀ is σ(W₀) (`false`) or 1 (`true`).
    pub gamma_one: bool,
    /// Factor on each residual branch's output (1 for the usual `x + f(x)`).
    pub residual_scale: f64,
}

impl TrunkConfig {
    /// The kind of every linear layer: [`LinearKind::Plain`], or σReparam with `γ₀ = 1`
    /// when `gamma_one` and `γ₀ = σ(W₀)` otherwise.
    pub fn linear_kind(&self) -> LinearKind {
        if self.sigma_reparam {
            LinearKind::SigmaReparam(if self.gamma_one {
                crate::GammaInit::One
            } else {
                crate::GammaInit::Sigma
            })
        } else {
            LinearKind::Plain
        }
    }
}

/// One transformer block: self-attention then an MLP, each a residual branch.
///
/// Submodules: `ln1` and `ln2` (unless [`NormPlacement::None`]), `attn`, `mlp`.
#[derive(Debug)]
pub struct Block {
    ln1: Option<LayerNorm>,
    attn: SelfAttention,
    ln2: Option<LayerNorm>,
    mlp: Mlp,
    drop: Dropout,
    norm: NormPlacement,
    residual_scale: f64,
}

impl Block {
    /// A block per `config`, weights drawn from `rng` in the order `attn.{q,k,v,proj}`,
    /// `mlp.{fc,proj}`. Errors when `n_heads` does not divide `d_model` or `dropout` ∉
    /// [0, 1).
    pub fn new(config: &TrunkConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        let kind = config.linear_kind();
        let mut make = |i, o| LinearLayer::new(kind, i, o, true, dtype, rng);
        let attn = SelfAttention::new(
            config.d_model,
            config.n_heads,
            config.causal,
            config.dropout,
            &mut make,
        )?;
        let mlp = Mlp::new(config.d_model, config.mlp_ratio * config.d_model, &mut make)?;
        let ln = || -> Result<Option<LayerNorm>> {
            Ok(match config.norm {
                NormPlacement::None => None,
                _ => Some(LayerNorm::new(config.d_model, 1e-5, dtype)?),
            })
        };
        Ok(Block {
            ln1: ln()?,
            attn,
            ln2: ln()?,
            mlp,
            drop: Dropout::new(config.dropout)?,
            norm: config.norm,
            residual_scale: config.residual_scale,
        })
    }

    fn norm(ln: &Option<LayerNorm>, x: &Tensor) -> Result<Tensor> {
        match ln {
            Some(ln) => ln.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// `x` `[batch, t, d_model]` through both residual branches; `rng` drives dropout.
    pub fn forward(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        self.forward_padded(x, None, rng)
    }

    /// [`Block::forward`] of sequences padded to `t`, their `lengths` hiding the padding
    /// from attention ([`SelfAttention::forward_padded`]).
    pub fn forward_padded(
        &self,
        x: &Tensor,
        lengths: Option<&[usize]>,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        let scale = |y: Tensor| -> Result<Tensor> {
            if self.residual_scale == 1.0 {
                Ok(y)
            } else {
                Ok(y.mul_scalar(self.residual_scale)?)
            }
        };
        match self.norm {
            NormPlacement::Pre => {
                let a = self
                    .attn
                    .forward_padded(&Self::norm(&self.ln1, x)?, lengths, rng)?;
                let x = x.add(&scale(self.drop.forward(&a, rng)?)?)?;
                let m = self.mlp.forward(&Self::norm(&self.ln2, &x)?)?;
                Ok(x.add(&scale(self.drop.forward(&m, rng)?)?)?)
            }
            NormPlacement::Post | NormPlacement::None => {
                let a = self.attn.forward_padded(x, lengths, rng)?;
                let x = Self::norm(&self.ln1, &x.add(&scale(self.drop.forward(&a, rng)?)?)?)?;
                let m = self.mlp.forward(&x)?;
                Self::norm(&self.ln2, &x.add(&scale(self.drop.forward(&m, rng)?)?)?)
            }
        }
    }

    /// The attention sublayer.
    pub fn attention(&self) -> &SelfAttention {
        &self.attn
    }

    /// Every linear layer of the block with its name relative to the block
    /// (`attn.q`, …, `mlp.proj`).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out: Vec<(String, &LinearLayer)> = self
            .attn
            .linears()
            .into_iter()
            .map(|(n, l)| (format!("attn.{n}"), l))
            .collect();
        out.extend(
            self.mlp
                .linears()
                .into_iter()
                .map(|(n, l)| (format!("mlp.{n}"), l)),
        );
        out
    }
}

impl Module for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        if let Some(ln) = &self.ln1 {
            ln.visit(&join(prefix, "ln1"), f);
        }
        self.attn.visit(&join(prefix, "attn"), f);
        if let Some(ln) = &self.ln2 {
            ln.visit(&join(prefix, "ln2"), f);
        }
        self.mlp.visit(&join(prefix, "mlp"), f);
    }

    fn set_training(&self, training: bool) {
        self.attn.set_training(training);
        self.mlp.set_training(training);
        self.drop.set_training(training);
    }
}

/// The stack of a transformer: `n_layers` [`Block`]s and, for pre-LN, a final LayerNorm,
/// mapping `[batch, t, d_model]` to `[batch, t, d_model]`. Causal, it is the body of a
/// decoder-only language model ([`crate::Gpt`]); bidirectional, of an encoder (ViT,
/// SimCLR, speech). Named a trunk rather than an encoder because it is both.
///
/// Parameter names: `blocks.{i}.{ln1,attn.{q,k,v,proj},ln2,mlp.{fc,proj}}.…` and
/// `ln_f.{weight,bias}` (plus `gamma`/`u`/`v`/`sigma` for σReparam), in that order.
#[derive(Debug)]
pub struct Trunk {
    config: TrunkConfig,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
}

impl Trunk {
    /// A trunk per `config` with weights drawn from `rng` block by block (same seed, same
    /// weights). Errors when `d_model` or `mlp_ratio` is 0, `n_heads` does not divide
    /// `d_model`, or `dropout` ∉ [0, 1).
    pub fn new(config: TrunkConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        if config.d_model == 0 || config.mlp_ratio == 0 {
            return Err(Error::Config(format!(
                "d_model ({}) and mlp_ratio ({}) must be positive",
                config.d_model, config.mlp_ratio
            )));
        }
        let blocks = (0..config.n_layers)
            .map(|_| Block::new(&config, dtype, rng))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = match config.norm {
            NormPlacement::Pre => Some(LayerNorm::new(config.d_model, 1e-5, dtype)?),
            _ => None,
        };
        Ok(Trunk {
            config,
            blocks,
            ln_f,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrunkConfig {
        &self.config
    }

    /// `x` `[batch, t, d_model]` through every block (and the final LayerNorm), giving
    /// `[batch, t, d_model]`; `rng` drives dropout. Errors unless `x` is rank 3 with last
    /// dimension `d_model`.
    pub fn forward(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        self.forward_padded(x, None, rng)
    }

    /// [`Trunk::forward`] of a batch of sequences padded to `t`: with `lengths` (one per
    /// sequence, each in `1..=t`), attention never looks at the padding positions
    /// `lengths[i]..t` (their outputs are computed but meaningless). Errors as
    /// [`Trunk::forward`], and on bad lengths.
    pub fn forward_padded(
        &self,
        x: &Tensor,
        lengths: Option<&[usize]>,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        if x.rank() != 3 || x.shape()[2] != self.config.d_model {
            return Err(Error::Config(format!(
                "trunk input must be [batch, t, d_model = {}], got {:?}",
                self.config.d_model,
                x.shape()
            )));
        }
        let mut x = x.clone();
        for b in &self.blocks {
            x = b.forward_padded(&x, lengths, rng)?;
        }
        match &self.ln_f {
            Some(ln) => ln.forward(&x),
            None => Ok(x),
        }
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Every linear layer with its name (`blocks.0.attn.q`, …, `blocks.{n-1}.mlp.proj`).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                b.linears()
                    .into_iter()
                    .map(move |(n, l)| (format!("blocks.{i}.{n}"), l))
            })
            .collect()
    }

    /// Turn attention-entropy recording on or off in every block.
    pub fn set_record_entropy(&self, on: bool) {
        self.blocks
            .iter()
            .for_each(|b| b.attention().set_record(on));
    }
}

impl Module for Trunk {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        for (i, b) in self.blocks.iter().enumerate() {
            b.visit(&join(prefix, &format!("blocks.{i}")), f);
        }
        if let Some(ln) = &self.ln_f {
            ln.visit(&join(prefix, "ln_f"), f);
        }
    }

    fn set_training(&self, training: bool) {
        self.blocks.iter().for_each(|b| b.set_training(training));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use rand::SeedableRng;

    fn config(norm: NormPlacement, sigma_reparam: bool, causal: bool) -> TrunkConfig {
        TrunkConfig {
            d_model: 8,
            n_layers: 2,
            n_heads: 2,
            mlp_ratio: 3,
            causal,
            dropout: 0.0,
            norm,
            sigma_reparam,
            gamma_one: false,
            residual_scale: 1.0,
        }
    }

    /// The parameter names of a two-block trunk, in visiting order.
    fn parameter_names(norm: NormPlacement, sigma_reparam: bool) -> Vec<String> {
        let linear: &[&str] = if sigma_reparam {
            &["weight", "gamma", "bias"]
        } else {
            &["weight", "bias"]
        };
        let mut names = Vec::new();
        let mut add = |prefix: String, leaves: &[&str]| {
            names.extend(leaves.iter().map(|l| format!("{prefix}.{l}")));
        };
        for i in 0..2 {
            for sub in [
                "ln1",
                "attn.q",
                "attn.k",
                "attn.v",
                "attn.proj",
                "ln2",
                "mlp.fc",
                "mlp.proj",
            ] {
                if sub.starts_with("ln") {
                    if norm != NormPlacement::None {
                        add(format!("blocks.{i}.{sub}"), &["weight", "bias"]);
                    }
                } else {
                    add(format!("blocks.{i}.{sub}"), linear);
                }
            }
        }
        if norm == NormPlacement::Pre {
            add("ln_f".into(), &["weight", "bias"]);
        }
        names
    }

    #[test]
    fn every_configuration_trains_every_parameter_with_the_expected_names() {
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            for sigma in [false, true] {
                for causal in [true, false] {
                    let case = format!("{norm:?} σReparam {sigma} causal {causal}");
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
                    let trunk =
                        Trunk::new(config(norm, sigma, causal), DType::F64, &mut rng).unwrap();
                    let x = Tensor::randn(&[2, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
                    let y = trunk.forward(&x, &mut rng).unwrap();
                    assert_eq!(y.shape(), &[2, 5, 8], "{case}");
                    let r = Tensor::randn(&[2, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
                    y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
                    let params = trunk.named_parameters();
                    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
                    assert_eq!(names, parameter_names(norm, sigma), "{case}");
                    for (name, p) in &params {
                        let g = p
                            .grad()
                            .unwrap_or_else(|| panic!("{case}: no grad for {name}"));
                        assert!(
                            g.to_vec_f64().unwrap().iter().any(|&v| v != 0.0),
                            "{case}: zero gradient for {name}"
                        );
                    }
                    let fc = &params.iter().find(|(n, _)| n == "blocks.0.mlp.fc.weight");
                    assert_eq!(fc.unwrap().1.shape(), &[24, 8], "{case}: mlp_ratio 3");
                    let n_sigma = trunk
                        .state_dict()
                        .unwrap()
                        .keys()
                        .filter(|k| k.ends_with(".sigma"))
                        .count();
                    assert_eq!(n_sigma, if sigma { 12 } else { 0 }, "{case}");
                    assert_eq!(trunk.linears().len(), 12);
                    assert_eq!(trunk.linears()[11].0, "blocks.1.mlp.proj");
                }
            }
        }
    }

    #[test]
    fn only_a_bidirectional_trunk_lets_position_0_see_the_last_position() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let x = Tensor::randn(&[1, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
        let mut last = x.to_vec_f64().unwrap();
        last[32..].iter_mut().for_each(|v| *v -= 0.5);
        let x2 = Tensor::from_f64s(&last, &[1, 5, 8], DType::F64).unwrap();
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            for causal in [true, false] {
                let trunk = Trunk::new(config(norm, true, causal), DType::F64, &mut rng).unwrap();
                // Eval mode: no power-iteration step between the two forwards.
                trunk.eval();
                let y = trunk.forward(&x, &mut rng).unwrap().to_vec_f64().unwrap();
                let y2 = trunk.forward(&x2, &mut rng).unwrap().to_vec_f64().unwrap();
                assert_eq!(y[..8] == y2[..8], causal, "{norm:?} causal {causal}");
                assert_ne!(y[32..], y2[32..]);
            }
        }
    }

    /// A sequence padded with garbage gives, at its real positions, the outputs of the
    /// sequence alone, and the recorded entropy averages the real rows only; with attention
    /// dropout active (the composed path), the first block's entropy, taken before dropout,
    /// is the same.
    #[test]
    fn padding_is_invisible_to_the_real_positions() {
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            for sigma in [false, true] {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
                let trunk = Trunk::new(config(norm, sigma, false), DType::F64, &mut rng).unwrap();
                trunk.eval();
                let short = Tensor::randn(&[1, 3, 8], 0.0, 1.0, DType::F64, &mut rng);
                let long = Tensor::randn(&[1, 5, 8], 0.0, 1.0, DType::F64, &mut rng);
                let pad = Tensor::randn(&[1, 2, 8], 0.0, 9.0, DType::F64, &mut rng);
                let padded = Tensor::cat(&[&short, &pad], 1).unwrap();
                let batch = Tensor::cat(&[&padded, &long], 0).unwrap();
                let alone = |x: &Tensor, rng: &mut rand_chacha::ChaCha8Rng| {
                    let y = trunk.forward(x, rng).unwrap().to_vec_f64().unwrap();
                    let e = trunk.blocks()[1].attention().entropy();
                    (y, e)
                };
                let (y_short, e_short) = alone(&short, &mut rng);
                let (y_long, e_long) = alone(&long, &mut rng);
                let y = trunk
                    .forward_padded(&batch, Some(&[3, 5]), &mut rng)
                    .unwrap()
                    .to_vec_f64()
                    .unwrap();
                let case = format!("{norm:?} σReparam {sigma}");
                for (a, b) in y[..24].iter().zip(&y_short) {
                    assert!((a - b).abs() < 1e-12, "{case}: {a} vs {b}");
                }
                for (a, b) in y[40..].iter().zip(&y_long) {
                    assert!((a - b).abs() < 1e-12, "{case}: {a} vs {b}");
                }
                // Entropy: the mean over the 3 + 5 real rows.
                let e = trunk.blocks()[1].attention().entropy();
                for h in 0..2 {
                    let want = (3.0 * e_short[h] + 5.0 * e_long[h]) / 8.0;
                    assert!((e[h] - want).abs() < 1e-12, "{case}: {} vs {want}", e[h]);
                }
                if !sigma {
                    let first = trunk.blocks()[0].attention().entropy();
                    let dropped = Trunk::new(
                        TrunkConfig {
                            dropout: 0.5,
                            ..config(norm, sigma, false)
                        },
                        DType::F64,
                        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
                    )
                    .unwrap();
                    dropped
                        .forward_padded(&batch, Some(&[3, 5]), &mut rng)
                        .unwrap();
                    let e = dropped.blocks()[0].attention().entropy();
                    for (a, b) in e.iter().zip(&first) {
                        assert!((a - b).abs() < 1e-12, "{case} dropout: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_configurations_and_inputs_are_errors() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let good = config(NormPlacement::Pre, false, false);
        for bad in [
            TrunkConfig {
                mlp_ratio: 0,
                ..good
            },
            TrunkConfig { d_model: 0, ..good },
            TrunkConfig { n_heads: 3, ..good },
            TrunkConfig {
                dropout: 1.0,
                ..good
            },
        ] {
            assert!(Trunk::new(bad, DType::F32, &mut rng).is_err(), "{bad:?}");
        }
        let trunk = Trunk::new(good, DType::F32, &mut rng).unwrap();
        for shape in [&[2, 5, 7][..], &[5, 8]] {
            let err = trunk
                .forward(&Tensor::zeros(shape, DType::F32), &mut rng)
                .unwrap_err();
            assert!(err.to_string().contains(&format!("{shape:?}")), "{err}");
        }
    }
}
