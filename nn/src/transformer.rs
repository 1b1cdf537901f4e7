//! A GPT-style decoder-only transformer (Radford et al. 2018/2019) whose blocks put
//! LayerNorm before the residual branches (pre-LN), after the residual sum (post-LN, the
//! original Transformer) or nowhere, and whose linear layers are plain or σReparam.

use crate::module::join;
use crate::{
    CausalSelfAttention, Dropout, Embedding, Error, LayerNorm, LinearKind, LinearLayer, Mlp,
    Module, Result, TensorRole,
};
use engine::{DType, Reduction, Tensor};

/// Where a block normalizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormPlacement {
    /// `x + f(LN(x))` for each branch, and a final LayerNorm before the head.
    Pre,
    /// `LN(x + f(x))` for each branch.
    Post,
    /// `x + f(x)`: no LayerNorm anywhere.
    None,
}

/// Hyper-parameters of a [`Gpt`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest sequence (number of learned positions).
    pub block_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads per block (must divide `d_model`).
    pub n_heads: usize,
    /// Dropout on embeddings, attention probabilities and residual branches.
    pub dropout: f64,
    /// LayerNorm placement.
    pub norm: NormPlacement,
    /// Whether every linear layer (attention, MLP, output head) is σReparam.
    pub sigma_reparam: bool,
    /// σReparam's γ₀ is σ(W₀) (`false`) or 1 (`true`).
    pub gamma_one: bool,
    /// Standard deviation of the token and position embeddings at initialization.
    pub emb_std: f64,
    /// Factor on each residual branch's output (1 for the usual `x + f(x)`).
    pub residual_scale: f64,
}

impl GptConfig {
    fn linear_kind(&self) -> LinearKind {
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

/// One transformer block: causal self-attention then an MLP, each a residual branch.
#[derive(Debug)]
pub struct Block {
    ln1: Option<LayerNorm>,
    attn: CausalSelfAttention,
    ln2: Option<LayerNorm>,
    mlp: Mlp,
    drop: Dropout,
    norm: NormPlacement,
    residual_scale: f64,
}

impl Block {
    /// A block per `config`, weights drawn from `rng`.
    pub fn new(config: &GptConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        let kind = config.linear_kind();
        let mut make = |i, o| LinearLayer::new(kind, i, o, true, dtype, rng);
        let attn =
            CausalSelfAttention::new(config.d_model, config.n_heads, config.dropout, &mut make)?;
        let mlp = Mlp::new(config.d_model, 4 * config.d_model, &mut make)?;
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

    /// `x` `[batch, t, d_model]` through both residual branches.
    pub fn forward(&self, x: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        let scale = |y: Tensor| -> Result<Tensor> {
            if self.residual_scale == 1.0 {
                Ok(y)
            } else {
                Ok(y.mul_scalar(self.residual_scale)?)
            }
        };
        match self.norm {
            NormPlacement::Pre => {
                let a = self.attn.forward(&Self::norm(&self.ln1, x)?, rng)?;
                let x = x.add(&scale(self.drop.forward(&a, rng)?)?)?;
                let m = self.mlp.forward(&Self::norm(&self.ln2, &x)?)?;
                Ok(x.add(&scale(self.drop.forward(&m, rng)?)?)?)
            }
            NormPlacement::Post | NormPlacement::None => {
                let a = self.attn.forward(x, rng)?;
                let x = Self::norm(&self.ln1, &x.add(&scale(self.drop.forward(&a, rng)?)?)?)?;
                let m = self.mlp.forward(&x)?;
                Self::norm(&self.ln2, &x.add(&scale(self.drop.forward(&m, rng)?)?)?)
            }
        }
    }

    /// The attention sublayer.
    pub fn attention(&self) -> &CausalSelfAttention {
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

/// A decoder-only language model: token + learned position embeddings, `n_layers`
/// [`Block`]s, a final LayerNorm (pre-LN only) and a linear head to vocabulary logits.
///
/// Parameter names: `tok_emb.weight`, `pos_emb.weight`, `blocks.{i}.{ln1,attn,ln2,mlp}…`,
/// `ln_f.{weight,bias}`, `head.{weight,bias}` (plus `gamma`/`u`/`v`/`sigma` for σReparam).
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    tok_emb: Embedding,
    pos_emb: Embedding,
    drop: Dropout,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    head: LinearLayer,
}

impl Gpt {
    /// A model per `config` with weights drawn from `rng` (same seed, same model). Errors on
    /// an invalid configuration (zero sizes, heads not dividing `d_model`, dropout ∉ [0,1)).
    pub fn new(config: GptConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        if config.vocab_size == 0 || config.block_size == 0 || config.d_model == 0 {
            return Err(Error::Config(format!("invalid model size {config:?}")));
        }
        let tok_emb = Embedding::new(
            config.vocab_size,
            config.d_model,
            config.emb_std,
            dtype,
            rng,
        )?;
        let pos_emb = Embedding::new(
            config.block_size,
            config.d_model,
            config.emb_std,
            dtype,
            rng,
        )?;
        let blocks = (0..config.n_layers)
            .map(|_| Block::new(&config, dtype, rng))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = match config.norm {
            NormPlacement::Pre => Some(LayerNorm::new(config.d_model, 1e-5, dtype)?),
            _ => None,
        };
        let head = LinearLayer::new(
            config.linear_kind(),
            config.d_model,
            config.vocab_size,
            true,
            dtype,
            rng,
        )?;
        Ok(Gpt {
            config,
            tok_emb,
            pos_emb,
            drop: Dropout::new(config.dropout)?,
            blocks,
            ln_f,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Logits `[batch, t, vocab]` for ids `[batch, t]` (row-major in `ids`). Errors when
    /// `t` exceeds `block_size`, `ids.len() ≠ batch·t` or an id is out of range.
    pub fn forward(
        &self,
        ids: &[usize],
        batch: usize,
        t: usize,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        if t == 0 || t > self.config.block_size {
            return Err(Error::Config(format!(
                "sequence length {t} must be in 1..={} (the model's block size)",
                self.config.block_size
            )));
        }
        let tok = self.tok_emb.forward(ids, &[batch, t])?;
        let pos = self.pos_emb.weight().narrow(0, 0, t)?;
        let mut x = self.drop.forward(&tok.add(&pos)?, rng)?;
        for b in &self.blocks {
            x = b.forward(&x, rng)?;
        }
        if let Some(ln) = &self.ln_f {
            x = ln.forward(&x)?;
        }
        self.head.forward(&x)
    }

    /// Mean cross-entropy (nats per token) of predicting `targets` from `ids`, both
    /// `[batch, t]` row-major.
    pub fn loss(
        &self,
        ids: &[usize],
        targets: &[usize],
        batch: usize,
        t: usize,
        rng: &mut impl rand::Rng,
    ) -> Result<Tensor> {
        let logits = self.forward(ids, batch, t, rng)?;
        let flat = logits.reshape(&[batch * t, self.config.vocab_size])?;
        Ok(flat.cross_entropy(targets, None, Reduction::Mean)?)
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Every linear layer with its full name (`blocks.0.attn.q`, …, `head`).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out: Vec<(String, &LinearLayer)> = self
            .blocks
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                b.linears()
                    .into_iter()
                    .map(move |(n, l)| (format!("blocks.{i}.{n}"), l))
            })
            .collect();
        out.push(("head".into(), &self.head));
        out
    }

    /// Turn attention-entropy recording on or off in every block.
    pub fn set_record_entropy(&self, on: bool) {
        self.blocks
            .iter()
            .for_each(|b| b.attention().set_record(on));
    }
}

impl Module for Gpt {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.tok_emb.visit(&join(prefix, "tok_emb"), f);
        self.pos_emb.visit(&join(prefix, "pos_emb"), f);
        for (i, b) in self.blocks.iter().enumerate() {
            b.visit(&join(prefix, &format!("blocks.{i}")), f);
        }
        if let Some(ln) = &self.ln_f {
            ln.visit(&join(prefix, "ln_f"), f);
        }
        self.head.visit(&join(prefix, "head"), f);
    }

    fn set_training(&self, training: bool) {
        self.drop.set_training(training);
        self.blocks.iter().for_each(|b| b.set_training(training));
        self.head.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use rand::SeedableRng;

    fn tiny(norm: NormPlacement, sigma_reparam: bool) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            block_size: 6,
            d_model: 8,
            n_layers: 2,
            n_heads: 2,
            dropout: 0.0,
            norm,
            sigma_reparam,
            gamma_one: false,
            emb_std: 1.0,
            residual_scale: 1.0,
        }
    }

    #[test]
    fn every_variant_trains_every_parameter() {
        let ids: Vec<usize> = (0..12).map(|i| (i * 7) % 11).collect();
        let targets: Vec<usize> = (0..12).map(|i| (i * 5 + 1) % 11).collect();
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            for sigma in [false, true] {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
                let m = Gpt::new(tiny(norm, sigma), DType::F64, &mut rng).unwrap();
                let loss = m.loss(&ids, &targets, 2, 6, &mut rng).unwrap();
                let l = loss.item().unwrap();
                assert!(
                    (l - 11f64.ln()).abs() < 2.0,
                    "{norm:?} {sigma}: initial loss {l}"
                );
                loss.backward().unwrap();
                for (name, p) in m.named_parameters() {
                    assert!(
                        p.grad().is_some(),
                        "{norm:?} {sigma}: no gradient for {name}"
                    );
                }
                let has_ln = m.named_parameters().iter().any(|(n, _)| n.contains("ln"));
                assert_eq!(has_ln, norm != NormPlacement::None);
                let n_sigma = m
                    .state_dict()
                    .unwrap()
                    .keys()
                    .filter(|k| k.ends_with(".sigma"))
                    .count();
                assert_eq!(n_sigma, if sigma { 13 } else { 0 });
            }
        }
    }

    #[test]
    fn state_dict_round_trip_reproduces_logits_and_rejects_long_inputs() {
        let cfg = tiny(NormPlacement::None, true);
        let a = Gpt::new(
            cfg,
            DType::F32,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        )
        .unwrap();
        let b = Gpt::new(
            cfg,
            DType::F32,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(2),
        )
        .unwrap();
        b.load_state_dict(&a.state_dict().unwrap()).unwrap();
        a.eval();
        b.eval();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let ids = [1, 2, 3, 4];
        let ya = a
            .forward(&ids, 1, 4, &mut rng)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        let yb = b
            .forward(&ids, 1, 4, &mut rng)
            .unwrap()
            .to_vec_f64()
            .unwrap();
        assert_eq!(ya, yb);
        assert!(a.forward(&[0; 7], 1, 7, &mut rng).is_err());
    }
}
