//! A Vision Transformer (Dosovitskiy et al., ICLR 2021; DeiT, Touvron et al. 2021): patch
//! embedding, learned position embeddings, an optional class token, a bidirectional
//! [`Trunk`] and a linear head; every linear layer (the patch embedding and the head
//! included, as in the official σReparam vision code) plain or σReparam.

use crate::module::join;
use crate::{
    ClsToken, Error, LinearLayer, Module, NormPlacement, PatchEmbedding, Pooling, Result,
    TensorRole, Trunk, TrunkConfig,
};
use engine::{DType, Reduction, Tensor};

/// Hyper-parameters of a [`Vit`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    /// Image height in pixels (a multiple of `patch_size`).
    pub height: usize,
    /// Image width in pixels (a multiple of `patch_size`).
    pub width: usize,
    /// Image channels (1 for grayscale).
    pub channels: usize,
    /// Side of the square, non-overlapping patches.
    pub patch_size: usize,
    /// Number of classes (the head's outputs); 0 for an encoder without a head (only
    /// [`Vit::features`], as SimCLR pretrains it).
    pub n_classes: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Attention heads per block (must divide `d_model`).
    pub n_heads: usize,
    /// Hidden width of each MLP in units of `d_model` (4 in ViT).
    pub mlp_ratio: usize,
    /// Dropout on attention probabilities and residual branches.
    pub dropout: f64,
    /// LayerNorm placement.
    pub norm: NormPlacement,
    /// Whether every linear layer (patch embedding, attention, MLP, head) is σReparam.
    pub sigma_reparam: bool,
    /// σReparam's γ₀ is σ(W₀) (`false`) or 1 (`true`).
    pub gamma_one: bool,
    /// How the trunk's output becomes one vector per image: the class token's position
    /// ([`Pooling::Cls`], which adds the token) or the mean over the patches.
    pub pooling: Pooling,
    /// Standard deviation of the position embeddings (and class token) at initialization
    /// (0.02 in ViT/DeiT).
    pub pos_std: f64,
}

impl VitConfig {
    /// Number of patches per image: `(height / patch_size) · (width / patch_size)`.
    pub fn n_patches(&self) -> usize {
        (self.height / self.patch_size.max(1)) * (self.width / self.patch_size.max(1))
    }

    /// Tokens the trunk sees per image: the patches, plus one for the class token.
    pub fn n_tokens(&self) -> usize {
        self.n_patches() + usize::from(self.pooling == Pooling::Cls)
    }

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

/// A ViT classifier: images `[b, channels, height, width]` → patch embeddings (+ class
/// token) + learned positions → bidirectional [`Trunk`] (its final LayerNorm when pre-LN)
/// → pooling → linear head → logits `[b, n_classes]` (no head when `n_classes` is 0).
///
/// Parameter names: `patch_embed.proj.…`, `cls` (with [`Pooling::Cls`]), `pos_emb`
/// `[n_tokens, d_model]`, `blocks.{i}.{ln1,attn,ln2,mlp}…`, `ln_f.{weight,bias}`,
/// `head.{weight,bias}` (plus `gamma`/`u`/`v`/`sigma` for σReparam).
#[derive(Debug)]
pub struct Vit {
    config: VitConfig,
    patch_embed: PatchEmbedding,
    cls: Option<ClsToken>,
    pos_emb: Tensor,
    trunk: Trunk,
    head: Option<LinearLayer>,
}

impl Vit {
    /// A model per `config` with weights drawn from `rng` in the order patch embedding, class
    /// token, position embeddings, trunk, head (same seed, same model).
    ///
    /// Errors with [`Error::Config`] on zero sizes, image sides that are not multiples of
    /// the patch size, `pos_std` not finite and ≥ 0, and as [`Trunk::new`].
    pub fn new(config: VitConfig, dtype: DType, rng: &mut impl rand::Rng) -> Result<Self> {
        let c = &config;
        let sizes = [c.channels, c.patch_size, c.d_model];
        let whole_patches = c.patch_size > 0
            && c.height > 0
            && c.width > 0
            && c.height.is_multiple_of(c.patch_size)
            && c.width.is_multiple_of(c.patch_size);
        let std_ok = c.pos_std.is_finite() && c.pos_std >= 0.0;
        if sizes.contains(&0) || !whole_patches || !std_ok {
            return Err(Error::Config(format!(
                "Vit: sizes must be positive, {}×{} images must be cut into whole {p}×{p} \
                 patches, and pos_std finite and ≥ 0; got {config:?}",
                c.height,
                c.width,
                p = c.patch_size
            )));
        }
        let kind = c.trunk().linear_kind();
        let patch_embed = PatchEmbedding::new(c.channels, c.patch_size, c.d_model, |i, o| {
            LinearLayer::new(kind, i, o, true, dtype, rng)
        })?;
        let cls = match c.pooling {
            Pooling::Cls => Some(ClsToken::new(c.d_model, c.pos_std, dtype, rng)?),
            Pooling::Mean => None,
        };
        let pos_emb = Tensor::randn(&[c.n_tokens(), c.d_model], 0.0, c.pos_std, dtype, rng)
            .requires_grad_(true)?;
        let trunk = Trunk::new(c.trunk(), dtype, rng)?;
        let head = match c.n_classes {
            0 => None,
            n => Some(LinearLayer::new(kind, c.d_model, n, true, dtype, rng)?),
        };
        Ok(Vit {
            config,
            patch_embed,
            cls,
            pos_emb,
            trunk,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The pooled features `[b, d_model]` of `images` `[b, channels, height, width]`: the
    /// trunk's output at the class token, or its mean over the patches. `rng` drives
    /// dropout. Errors with [`Error::Config`] naming the shape unless `images` has the
    /// configured channels, height and width.
    pub fn features(&self, images: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        let c = &self.config;
        if !matches!(*images.shape(), [_, ch, h, w] if ch == c.channels && h == c.height && w == c.width)
        {
            return Err(Error::Config(format!(
                "Vit: needs images [batch, {}, {}, {}], got shape {:?}",
                c.channels,
                c.height,
                c.width,
                images.shape()
            )));
        }
        let mut x = self.patch_embed.forward(images)?;
        if let Some(cls) = &self.cls {
            x = cls.forward(&x)?;
        }
        let x = self.trunk.forward(&x.add(&self.pos_emb)?, rng)?;
        c.pooling.pool(&x)
    }

    /// Logits `[b, n_classes]` of `images` `[b, channels, height, width]`; errors as
    /// [`Vit::features`], and with [`Error::Config`] for an encoder without a head.
    pub fn forward(&self, images: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        let head = self.head.as_ref().ok_or_else(|| {
            Error::Config("Vit: this encoder has no head (n_classes 0); use features".into())
        })?;
        head.forward(&self.features(images, rng)?)
    }

    /// Mean cross-entropy (nats per image) of `labels` (one per image, each below
    /// `n_classes`) given `logits` `[b, n_classes]` from [`Vit::forward`].
    pub fn loss(&self, logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
        Ok(logits.cross_entropy(labels, None, Reduction::Mean)?)
    }

    /// The trunk.
    pub fn trunk(&self) -> &Trunk {
        &self.trunk
    }

    /// Every linear layer with its full name (`patch_embed.proj`, `blocks.0.attn.q`, …,
    /// `head` when there is one).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out = vec![("patch_embed.proj".to_string(), self.patch_embed.proj())];
        out.extend(self.trunk.linears());
        out.extend(self.head.iter().map(|h| ("head".to_string(), h)));
        out
    }

    /// Turn attention-entropy recording on or off in every block.
    pub fn set_record_entropy(&self, on: bool) {
        self.trunk.set_record_entropy(on);
    }
}

impl Module for Vit {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        if let Some(cls) = &self.cls {
            cls.visit(prefix, f);
        }
        f(
            join(prefix, "pos_emb"),
            &self.pos_emb,
            TensorRole::Parameter,
        );
        self.trunk.visit(prefix, f);
        if let Some(head) = &self.head {
            head.visit(&join(prefix, "head"), f);
        }
    }

    fn set_training(&self, training: bool) {
        self.patch_embed.set_training(training);
        self.trunk.set_training(training);
        if let Some(head) = &self.head {
            head.set_training(training);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModuleExt;
    use engine::gradcheck;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny(norm: NormPlacement, sigma_reparam: bool, pooling: Pooling) -> VitConfig {
        VitConfig {
            height: 4,
            width: 6,
            channels: 1,
            patch_size: 2,
            n_classes: 3,
            d_model: 8,
            n_layers: 2,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            norm,
            sigma_reparam,
            gamma_one: false,
            pooling,
            pos_std: 0.02,
        }
    }

    #[test]
    fn every_variant_trains_every_parameter_with_the_expected_names() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let images = Tensor::randn(&[3, 1, 4, 6], 0.0, 1.0, DType::F64, &mut rng);
        for norm in [NormPlacement::Pre, NormPlacement::Post, NormPlacement::None] {
            for sigma in [false, true] {
                for pooling in [Pooling::Cls, Pooling::Mean] {
                    let case = format!("{norm:?} σReparam {sigma} {pooling:?}");
                    let cfg = tiny(norm, sigma, pooling);
                    let m = Vit::new(cfg, DType::F64, &mut rng).unwrap();
                    let logits = m.forward(&images, &mut rng).unwrap();
                    assert_eq!(logits.shape(), [3, 3], "{case}");
                    let loss = m.loss(&logits, &[0, 2, 1]).unwrap();
                    let l = loss.item().unwrap();
                    assert!((l - 3f64.ln()).abs() < 1.0, "{case}: initial loss {l}");
                    loss.backward().unwrap();
                    let params = m.named_parameters();
                    for (name, p) in &params {
                        let g = p.grad().unwrap_or_else(|| panic!("{case}: no grad {name}"));
                        assert!(
                            g.to_vec_f64().unwrap().iter().any(|&v| v != 0.0),
                            "{case}: zero gradient for {name}"
                        );
                    }
                    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
                    assert_eq!(names[0], "patch_embed.proj.weight", "{case}");
                    assert_eq!(names.contains(&"cls"), pooling == Pooling::Cls, "{case}");
                    assert_eq!(names.last(), Some(&"head.bias"), "{case}");
                    let pos = params.iter().find(|(n, _)| n == "pos_emb").unwrap();
                    assert_eq!(pos.1.shape(), [cfg.n_tokens(), 8], "{case}");
                    assert_eq!(cfg.n_patches(), 6);
                    // Patch embedding, 2 × 6 in the blocks, head.
                    assert_eq!(m.linears().len(), 14, "{case}");
                    let n_sigma = m
                        .state_dict()
                        .unwrap()
                        .keys()
                        .filter(|k| k.ends_with(".sigma"))
                        .count();
                    assert_eq!(n_sigma, if sigma { 14 } else { 0 }, "{case}");
                }
            }
        }
    }

    /// Without position embeddings' help a ViT is permutation-equivariant over patches; with
    /// them the logits depend on where each patch is. Mean pooling over a model with zero
    /// position embeddings gives the same logits for an image whose two patch columns are
    /// swapped; the trained-from-init embeddings (nonzero) do not.
    #[test]
    fn position_embeddings_make_patch_order_matter() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut cfg = tiny(NormPlacement::Pre, false, Pooling::Mean);
        cfg.width = 4;
        let x = Tensor::randn(&[1, 1, 4, 4], 0.0, 1.0, DType::F64, &mut rng);
        let v = x.to_vec_f64().unwrap();
        // Swap the left and right 2-pixel halves of every row: patch columns swap.
        let swapped: Vec<f64> = (0..16).map(|i| v[(i / 4) * 4 + (i % 4 + 2) % 4]).collect();
        let y = Tensor::from_f64s(&swapped, &[1, 1, 4, 4], DType::F64).unwrap();
        for std in [0.0, 1.0] {
            cfg.pos_std = std;
            let m = Vit::new(cfg, DType::F64, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
            let a = m.forward(&x, &mut rng).unwrap().to_vec_f64().unwrap();
            let b = m.forward(&y, &mut rng).unwrap().to_vec_f64().unwrap();
            let diff = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            if std == 0.0 {
                assert!(diff < 1e-12, "no positions: {a:?} vs {b:?}");
            } else {
                assert!(diff > 1e-3, "positions: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn bad_configs_and_shapes_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let base = tiny(NormPlacement::Pre, false, Pooling::Cls);
        for bad in [
            VitConfig {
                patch_size: 4,
                ..base
            },
            VitConfig { d_model: 0, ..base },
            VitConfig {
                pos_std: f64::NAN,
                ..base
            },
        ] {
            let err = Vit::new(bad, DType::F64, &mut rng).unwrap_err();
            assert!(
                err.to_string().contains("Vit: sizes must be positive"),
                "{err}"
            );
        }
        let m = Vit::new(base, DType::F64, &mut rng).unwrap();
        let err = m
            .forward(&Tensor::zeros(&[2, 1, 6, 4], DType::F64), &mut rng)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("needs images [batch, 1, 4, 6], got shape [2, 1, 6, 4]"),
            "{err}"
        );
    }

    /// Finite differences of the whole ViT forward with respect to the images, for a plain
    /// pre-LN model with a class token and a σReparam model without LayerNorm with mean
    /// pooling (eval mode: every call sees the same σReparam state).
    #[test]
    fn gradcheck_vit_forward() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x = Tensor::randn(&[2, 1, 4, 6], 0.0, 1.0, DType::F64, &mut rng);
        for (norm, sigma, pooling) in [
            (NormPlacement::Pre, false, Pooling::Cls),
            (NormPlacement::None, true, Pooling::Mean),
            (NormPlacement::Post, true, Pooling::Cls),
        ] {
            let m = Vit::new(tiny(norm, sigma, pooling), DType::F64, &mut rng).unwrap();
            m.eval();
            gradcheck(
                |t| Ok(m.forward(&t[0], &mut ChaCha8Rng::seed_from_u64(0)).unwrap()),
                std::slice::from_ref(&x),
            )
            .unwrap();
        }
    }
}
