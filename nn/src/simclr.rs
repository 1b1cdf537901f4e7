//! SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020, "A Simple Framework for
//! Contrastive Learning of Visual Representations"): a ViT encoder, a two-layer ReLU
//! projection head, and the NT-Xent loss over the two views of every image of a batch.

use crate::module::join;
use crate::{Error, LinearLayer, Mlp, Module, Result, TensorRole, Vit, VitConfig};
use engine::{Activation, DType, Reduction, Tensor};

/// The similarity logits of NT-Xent and the positive of each row.
///
/// `z` `[2n, d]` holds the projections of two views of `n` images: rows `i` and `i + n`
/// are the views of image `i`. The logits are `s_ij = cos(z_i, z_j) / τ` `[2n, 2n]` with
/// the diagonal (a view against itself) set to −∞, so a row's softmax runs over the other
/// `2n − 1` views; the target of row `i` is its positive, `(i + n) mod 2n`. The cosines
/// come from [`Tensor::normalize`] (eps 1e-12, as `F.normalize`) and one product.
///
/// Errors with [`Error::Config`] unless `z` is 2-D with an even, nonzero number of rows
/// and `temperature` is finite and > 0.
pub fn nt_xent_logits(z: &Tensor, temperature: f64) -> Result<(Tensor, Vec<usize>)> {
    let rows = match *z.shape() {
        [r, _] if r > 0 && r % 2 == 0 => r,
        _ => {
            return Err(Error::Config(format!(
                "nt_xent: needs projections [2n, d] with n ≥ 1 (two views per image), got \
                 shape {:?}",
                z.shape()
            )))
        }
    };
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Config(format!(
            "nt_xent: the temperature must be finite and > 0, got {temperature}"
        )));
    }
    let n = rows / 2;
    let u = z.normalize(1, 1e-12)?;
    let sim = u.matmul(&u.t()?)?.mul_scalar(1.0 / temperature)?;
    let eye: Vec<f64> = (0..rows * rows)
        .map(|k| f64::from(u8::from(k / rows == k % rows)))
        .collect();
    let eye = Tensor::from_f64s(&eye, &[rows, rows], DType::F32)?;
    let logits = sim.masked_fill(&eye, f64::NEG_INFINITY)?;
    let targets = (0..rows).map(|i| (i + n) % rows).collect();
    Ok((logits, targets))
}

/// NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR (its eq. 1),
/// averaged over all `2n` views: `ℓ_i = −log( e^{s_{i,p(i)}} / Σ_{j≠i} e^{s_ij} )` with
/// the logits and positives `p(i)` of [`nt_xent_logits`] (the positive against the other
/// `2n − 2` views), computed by the fused, stable [`Tensor::cross_entropy`]. A scalar in
/// nats; its gradient flows to `z`. Errors as [`nt_xent_logits`].
pub fn nt_xent(z: &Tensor, temperature: f64) -> Result<Tensor> {
    let (logits, targets) = nt_xent_logits(z, temperature)?;
    Ok(logits.cross_entropy(&targets, None, Reduction::Mean)?)
}

/// A SimCLR model: a headless [`Vit`] encoder (its pooled features are what a linear probe
/// reads) and a projection MLP `Linear(d_model, hidden) → ReLU → Linear(hidden, proj_dim)`
/// (SimCLR's head, without its batch norm), whose linears are σReparam when the encoder's
/// are.
///
/// Parameter names: the encoder's under `encoder.` (`encoder.blocks.0.attn.q.weight`, …)
/// and `projection.{fc,proj}.…`.
#[derive(Debug)]
pub struct SimClr {
    encoder: Vit,
    projection: Mlp,
}

impl SimClr {
    /// A model with the encoder of `encoder` (whose `n_classes` must be 0: no head) and a
    /// projection `[d_model → hidden → proj_dim]`, weights drawn from `rng` in the order
    /// encoder, projection.
    ///
    /// Errors with [`Error::Config`] when `encoder.n_classes` is not 0 or a projection size
    /// is 0, and as [`Vit::new`].
    pub fn new(
        encoder: VitConfig,
        hidden: usize,
        proj_dim: usize,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Result<Self> {
        if encoder.n_classes != 0 || hidden == 0 || proj_dim == 0 {
            return Err(Error::Config(format!(
                "SimClr: needs an encoder without a head (n_classes 0, got {}) and positive \
                 projection sizes (hidden {hidden}, proj_dim {proj_dim})",
                encoder.n_classes
            )));
        }
        let kind = encoder.trunk().linear_kind();
        let d = encoder.d_model;
        let encoder = Vit::new(encoder, dtype, rng)?;
        let projection = Mlp::with_activation(d, hidden, proj_dim, Activation::Relu, |i, o| {
            LinearLayer::new(kind, i, o, true, dtype, rng)
        })?;
        Ok(SimClr {
            encoder,
            projection,
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Vit {
        &self.encoder
    }

    /// The encoder's pooled features `[b, d_model]` of `images` `[b, channels, height,
    /// width]` (what a linear probe reads); errors as [`Vit::features`].
    pub fn features(&self, images: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        self.encoder.features(images, rng)
    }

    /// The projections `[b, proj_dim]` of `images` (not normalized; [`nt_xent`] does that);
    /// errors as [`Vit::features`].
    pub fn forward(&self, images: &Tensor, rng: &mut impl rand::Rng) -> Result<Tensor> {
        self.projection.forward(&self.features(images, rng)?)
    }

    /// Every linear layer with its full name (`encoder.patch_embed.proj`, …,
    /// `projection.fc`, `projection.proj`).
    pub fn linears(&self) -> Vec<(String, &LinearLayer)> {
        let mut out: Vec<_> = self
            .encoder
            .linears()
            .into_iter()
            .map(|(n, l)| (join("encoder", &n), l))
            .collect();
        out.extend(
            self.projection
                .linears()
                .into_iter()
                .map(|(n, l)| (join("projection", n), l)),
        );
        out
    }

    /// Turn attention-entropy recording on or off in every block of the encoder.
    pub fn set_record_entropy(&self, on: bool) {
        self.encoder.set_record_entropy(on);
    }
}

impl Module for SimClr {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.encoder.visit(&join(prefix, "encoder"), f);
        self.projection.visit(&join(prefix, "projection"), f);
    }

    fn set_training(&self, training: bool) {
        self.encoder.set_training(training);
        self.projection.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModuleExt, NormPlacement, Pooling};
    use engine::gradcheck;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// NT-Xent on two pairs, by hand. Views (unit vectors already) z₀ = (1, 0), z₁ = (0, 1),
    /// z₂ = (1, 0) (the positive of z₀), z₃ = (0.6, 0.8) (the positive of z₁); τ = 0.5.
    /// Row 0 sees cosines (−, 0, 1, 0.6) → logits (−∞, 0, 2, 1.2) and its positive is 2:
    /// ℓ₀ = log(1 + e² + e^1.2) − 2. Row 1: (0, −, 0, 0.8) → (0, −∞, 0, 1.6), positive 3:
    /// ℓ₁ = log(2 + e^1.6) − 1.6. Rows 2 and 3 by symmetry: row 2 = (2, 0, −∞, 1.2),
    /// positive 0: ℓ₂ = ℓ₀; row 3 = (1.2, 1.6, 1.2, −∞), positive 1:
    /// ℓ₃ = log(2e^1.2 + e^1.6) − 1.6.
    #[test]
    fn nt_xent_two_pairs_by_hand() {
        let z = Tensor::from_f64s(
            &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.6, 0.8],
            &[4, 2],
            DType::F64,
        )
        .unwrap()
        .requires_grad_(true)
        .unwrap();
        let e = f64::exp;
        let l0 = (1.0 + e(2.0) + e(1.2)).ln() - 2.0;
        let l1 = (2.0 + e(1.6)).ln() - 1.6;
        let l3 = (2.0 * e(1.2) + e(1.6)).ln() - 1.6;
        let want = (2.0 * l0 + l1 + l3) / 4.0;
        let loss = nt_xent(&z, 0.5).unwrap();
        assert!(
            (loss.item().unwrap() - want).abs() < 1e-12,
            "{loss:?} vs {want}"
        );

        // The gradient, by hand for row 0's view z₀ = (1, 0): it enters every row's
        // logits. ∂L/∂s_ij = (p_ij − [j = pos(i)]) / 4, and s_ij = u_i·u_j / τ with
        // u = z/‖z‖, whose Jacobian at a unit z is I − z zᵀ. So
        // ∂L/∂z₀ = (I − z₀z₀ᵀ) Σ_j (∂L/∂s_0j + ∂L/∂s_j0) z_j / τ.
        loss.backward().unwrap();
        let g = z.grad().unwrap().to_vec_f64().unwrap();
        let zs = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]];
        let logits: [[f64; 4]; 4] = std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                if i == j {
                    f64::NEG_INFINITY
                } else {
                    (zs[i][0] * zs[j][0] + zs[i][1] * zs[j][1]) / 0.5
                }
            })
        });
        let dl = |i: usize, j: usize| {
            let s: f64 = logits[i].iter().map(|&x| x.exp()).sum();
            (logits[i][j].exp() / s - f64::from(u8::from(j == (i + 2) % 4))) / 4.0
        };
        let mut v = [0.0; 2];
        for (j, zj) in zs.iter().enumerate().skip(1) {
            let w = (dl(0, j) + dl(j, 0)) / 0.5;
            v[0] += w * zj[0];
            v[1] += w * zj[1];
        }
        // Project out the z₀ = (1, 0) direction.
        let want_g0 = [0.0, v[1]];
        assert!(
            (g[0] - want_g0[0]).abs() < 1e-12 && (g[1] - want_g0[1]).abs() < 1e-12,
            "{:?} vs {want_g0:?}",
            &g[..2]
        );
        assert!(g.iter().all(|x| x.is_finite()));
    }

    /// Finite differences of NT-Xent in f64 on three pairs of unnormalized projections.
    #[test]
    fn gradcheck_nt_xent() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let z = Tensor::randn(&[6, 4], 0.0, 1.0, DType::F64, &mut rng);
        for tau in [0.1, 0.5] {
            gradcheck(
                |t| Ok(nt_xent(&t[0], tau).unwrap()),
                std::slice::from_ref(&z),
            )
            .unwrap();
        }
    }

    #[test]
    fn nt_xent_bad_input_is_an_error() {
        let z = Tensor::zeros(&[3, 2], DType::F32);
        let e = nt_xent(&z, 0.5).unwrap_err().to_string();
        assert!(e.contains("got shape [3, 2]"), "{e}");
        let z = Tensor::zeros(&[4, 2], DType::F32);
        for tau in [0.0, f64::NAN, -1.0] {
            let e = nt_xent(&z, tau).unwrap_err().to_string();
            assert!(e.contains("temperature must be finite and > 0"), "{e}");
        }
        // All-zero projections: every cosine is 0, a uniform softmax over 3 others.
        let l = nt_xent(&z, 0.5).unwrap().item().unwrap();
        assert!((l - 3f64.ln()).abs() < 1e-6, "{l}");
    }

    fn encoder(norm: NormPlacement, sigma_reparam: bool) -> VitConfig {
        VitConfig {
            height: 4,
            width: 4,
            channels: 1,
            patch_size: 2,
            n_classes: 0,
            d_model: 8,
            n_layers: 1,
            n_heads: 2,
            mlp_ratio: 2,
            dropout: 0.0,
            norm,
            sigma_reparam,
            gamma_one: false,
            pooling: Pooling::Mean,
            pos_std: 0.02,
        }
    }

    /// The model's shapes and names, and finite differences of NT-Xent through the whole
    /// model (plain pre-LN and σReparam without LayerNorm, eval mode).
    #[test]
    fn simclr_model_shapes_names_and_gradcheck() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = Tensor::randn(&[4, 1, 4, 4], 0.0, 1.0, DType::F64, &mut rng);
        for (norm, sigma) in [(NormPlacement::Pre, false), (NormPlacement::None, true)] {
            let m = SimClr::new(encoder(norm, sigma), 16, 6, DType::F64, &mut rng).unwrap();
            m.eval();
            let mut r = ChaCha8Rng::seed_from_u64(0);
            assert_eq!(m.features(&x, &mut r).unwrap().shape(), &[4, 8]);
            assert_eq!(m.forward(&x, &mut r).unwrap().shape(), &[4, 6]);
            let names: Vec<String> = m.linears().into_iter().map(|(n, _)| n).collect();
            assert_eq!(names.first().unwrap(), "encoder.patch_embed.proj");
            assert_eq!(
                &names[names.len() - 2..],
                ["projection.fc", "projection.proj"]
            );
            let params = m.named_parameters();
            assert!(
                params.iter().all(|(n, _)| !n.contains("head")),
                "{params:?}"
            );
            gradcheck(
                |t| Ok(nt_xent(&m.forward(&t[0], &mut r.clone()).unwrap(), 0.5).unwrap()),
                std::slice::from_ref(&x),
            )
            .unwrap();
        }
        let with_head = VitConfig {
            n_classes: 3,
            ..encoder(NormPlacement::Pre, false)
        };
        let e = SimClr::new(with_head, 16, 6, DType::F64, &mut rng).unwrap_err();
        assert!(e.to_string().contains("without a head"), "{e}");
        let headless = Vit::new(encoder(NormPlacement::Pre, false), DType::F64, &mut rng).unwrap();
        let e = headless.forward(&x, &mut rng).unwrap_err().to_string();
        assert!(e.contains("no head"), "{e}");
    }
}
