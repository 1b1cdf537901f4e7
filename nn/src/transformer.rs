//! A GPT-style decoder-only transformer (Radford et al. 2018/2019): token and position
//! embeddings, a causal [`Trunk`] whose blocks put LayerNorm before the residual branches
//! (pre-LN), after the residual sum (post-LN, the original Transformer) or nowhere, and a
//! linear head; every linear layer plain or σReparam.

use crate::module::join;
use crate::{
    Block, Dropout, Embedding, Error, LinearLayer, Module, NormPlacement, Result, TensorRole,
    Trunk, TrunkConfig,
};
use engine::{DType, Reduction, Tensor};

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
    /// The model's trunk: causal attention and MLPs of width `4 · d_model` (GPT-2's), the
    /// other fields copied from this configuration.
    pub fn trunk(&self) -> TrunkConfig {
        TrunkConfig {
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            mlp_ratio: 4,
            causal: true,
            dropout: self.dropout,
            norm: self.norm,
            sigma_reparam: self.sigma_reparam,
            gamma_one: self.gamma_one,
            residual_scale: self.residual_scale,
        }
    }
}

/// A decoder-only language model: token + learned position embeddings, a causal [`Trunk`]
/// (`n_layers` blocks and, pre-LN only, a final LayerNorm) and a linear head to vocabulary
/// logits.
///
/// Parameter names: `tok_emb.weight`, `pos_emb.weight`, `blocks.{i}.{ln1,attn,ln2,mlp}…`,
/// `ln_f.{weight,bias}`, `head.{weight,bias}` (plus `gamma`/`u`/`v`/`sigma` for σReparam):
/// the trunk's names are not prefixed.
#[derive(Debug)]
pub struct Gpt {
    config: GptConfig,
    tok_emb: Embedding,
    pos_emb: Embedding,
    drop: Dropout,
    trunk: Trunk,
    head: LinearLayer,
}

impl Gpt {
    /// A model per `config` with weights drawn from `rng` in the order token embedding,
    /// position embedding, trunk, head (same seed, same model). Errors on an invalid
    /// configuration (zero sizes, heads not dividing `d_model`, dropout ∉ [0,1)).
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
        let trunk = Trunk::new(config.trunk(), dtype, rng)?;
        let head = LinearLayer::new(
            config.trunk().linear_kind(),
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
            trunk,
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
        let x = self.drop.forward(&tok.add(&pos)?, rng)?;
        self.head.forward(&self.trunk.forward(&x, rng)?)
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
        self.trunk.blocks()
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

impl Module for Gpt {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.tok_emb.visit(&join(prefix, "tok_emb"), f);
        self.pos_emb.visit(&join(prefix, "pos_emb"), f);
        self.trunk.visit(prefix, f);
        self.head.visit(&join(prefix, "head"), f);
    }

    fn set_training(&self, training: bool) {
        self.drop.set_training(training);
        self.trunk.set_training(training);
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

    /// The model is the one from before its blocks moved into a [`Trunk`]: every tensor
    /// keeps its name and visiting order, and the initial loss at seed 0 (which depends on
    /// the order of the draws from the rng) is the value recorded from that code.
    #[test]
    fn names_and_initial_loss_are_those_of_the_model_before_the_trunk() {
        let ids: Vec<usize> = (0..12).map(|i| (i * 7) % 11).collect();
        let targets: Vec<usize> = (0..12).map(|i| (i * 5 + 1) % 11).collect();
        for (norm, sigma, want) in [
            (NormPlacement::Pre, true, 2.4428937922543006),
            (NormPlacement::Post, false, 2.4216635158234117),
            (NormPlacement::None, true, 2.516285618182788),
        ] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
            let m = Gpt::new(tiny(norm, sigma), DType::F64, &mut rng).unwrap();
            let l = m
                .loss(&ids, &targets, 2, 6, &mut rng)
                .unwrap()
                .item()
                .unwrap();
            assert!((l - want).abs() < 1e-12, "{norm:?} {sigma}: {l} vs {want}");
        }
        let m = Gpt::new(
            tiny(NormPlacement::Pre, true),
            DType::F32,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        )
        .unwrap();
        let mut names = Vec::new();
        m.visit("", &mut |n, _, _| names.push(n));
        let leaves = |prefix: &str, of: &[&str]| -> Vec<String> {
            of.iter().map(|l| format!("{prefix}.{l}")).collect()
        };
        let (ln, sr) = (
            ["weight", "bias"],
            ["weight", "gamma", "bias", "u", "v", "sigma"],
        );
        let mut want = vec!["tok_emb.weight".to_string(), "pos_emb.weight".into()];
        for i in 0..2 {
            want.extend(leaves(&format!("blocks.{i}.ln1"), &ln));
            for p in ["q", "k", "v", "proj"] {
                want.extend(leaves(&format!("blocks.{i}.attn.{p}"), &sr));
            }
            want.extend(leaves(&format!("blocks.{i}.ln2"), &ln));
            for p in ["fc", "proj"] {
                want.extend(leaves(&format!("blocks.{i}.mlp.{p}"), &sr));
            }
        }
        want.extend(leaves("ln_f", &ln));
        want.extend(leaves("head", &sr));
        assert_eq!(names, want);
        let linears: Vec<String> = m.linears().into_iter().map(|(n, _)| n).collect();
        assert_eq!(linears.len(), 13);
        assert_eq!(
            [&linears[0], &linears[5], &linears[12]],
            ["blocks.0.attn.q", "blocks.0.mlp.proj", "head"]
        );
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
