//! The patch embedding of a ViT (Dosovitskiy et al., ICLR 2021): an image cut into
//! non-overlapping `p × p` patches, each flattened and mapped by one linear layer.

use crate::module::join;
use crate::{Error, LinearLayer, Module, Result, TensorRole};
use engine::Tensor;

/// Images `[b, c, h, w]` to patch embeddings `[b, n_patches, d_model]` through one linear
/// layer `proj` `[c·p·p → d_model]` (timm's `PatchEmbed.proj`; a stride-`p` Conv2d with
/// kernel `[d_model, c, p, p]` is the same map with its kernel flattened to
/// `[d_model, c·p·p]`).
///
/// Patch `(i, j)` (row `i` of `h/p`, column `j` of `w/p`) is output index `i·(w/p) + j`;
/// within a patch the `c·p·p` values are flattened channel-major, then row, then column —
/// the order of a Conv2d kernel `[d_model, c, p, p]` flattened row-major. `proj` is built by
/// the caller's `make(in, out)`, so it can be plain or σReparam (the official σReparam vision
/// code reparametrizes the patch embedding too).
#[derive(Debug)]
pub struct PatchEmbedding {
    proj: LinearLayer,
    channels: usize,
    patch: usize,
}

impl PatchEmbedding {
    /// A patch embedding of `channels`-channel images in `patch × patch` patches with
    /// `proj = make(channels·patch·patch, d_model)`.
    ///
    /// Errors with [`Error::Config`] when `channels` or `patch` is 0, and as `make`.
    pub fn new(
        channels: usize,
        patch: usize,
        d_model: usize,
        make: impl FnOnce(usize, usize) -> Result<LinearLayer>,
    ) -> Result<Self> {
        if channels == 0 || patch == 0 {
            return Err(Error::Config(format!(
                "PatchEmbedding: channels ({channels}) and patch size ({patch}) must be > 0"
            )));
        }
        Ok(PatchEmbedding {
            proj: make(channels * patch * patch, d_model)?,
            channels,
            patch,
        })
    }

    /// The patches of `images` `[b, c, h, w]` as rows `[b, (h/p)·(w/p), c·p·p]`, in the
    /// order given on [`PatchEmbedding`] (a view reshaped to `[b, c, h/p, p, w/p, p]`,
    /// permuted to `[b, h/p, w/p, c, p, p]` and copied; differentiable).
    ///
    /// Errors with [`Error::Config`] naming the shape unless `images` is `[b, c, h, w]`
    /// with the layer's `c` and `h`, `w` multiples of `p`.
    pub fn patchify(&self, images: &Tensor) -> Result<Tensor> {
        let (c, p) = (self.channels, self.patch);
        match *images.shape() {
            [b, ci, h, w] if ci == c && h % p == 0 && w % p == 0 => {
                let (hp, wp) = (h / p, w / p);
                Ok(images
                    .reshape(&[b, c, hp, p, wp, p])?
                    .permute(&[0, 2, 4, 1, 3, 5])?
                    .contiguous()?
                    .reshape(&[b, hp * wp, c * p * p])?)
            }
            _ => Err(Error::Config(format!(
                "PatchEmbedding: needs images [batch, {c}, h, w] with h and w multiples of the \
                 patch size {p}, got shape {:?}",
                images.shape()
            ))),
        }
    }

    /// `proj` applied to every patch of `images` `[b, c, h, w]`: `[b, (h/p)·(w/p), d_model]`.
    /// Errors as [`PatchEmbedding::patchify`].
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.proj.forward(&self.patchify(images)?)
    }

    /// The linear layer `proj` `[c·p·p → d_model]`.
    pub fn proj(&self) -> &LinearLayer {
        &self.proj
    }
}

impl Module for PatchEmbedding {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole)) {
        self.proj.visit(&join(prefix, "proj"), f);
    }

    fn set_training(&self, training: bool) {
        self.proj.set_training(training);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GammaInit, LinearKind};
    use engine::{gradcheck, DType};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn embedding(c: usize, p: usize, d: usize, kind: LinearKind, seed: u64) -> PatchEmbedding {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        PatchEmbedding::new(c, p, d, |i, o| {
            LinearLayer::new(kind, i, o, true, DType::F64, &mut rng)
        })
        .unwrap()
    }

    /// A 2-channel 2×4 image in 2×2 patches, values 10·channel + 4·row + column.
    #[test]
    fn patches_in_conv_kernel_order() {
        let pe = embedding(2, 2, 3, LinearKind::Plain, 0);
        let v: Vec<f64> = (0..16).map(|i| (10 * (i / 8) + i % 8) as f64).collect();
        let x = Tensor::from_f64s(&v, &[1, 2, 2, 4], DType::F64).unwrap();
        let patches = pe.patchify(&x).unwrap();
        assert_eq!(patches.shape(), [1, 2, 8]);
        // Patch (0, 0): channel 0 rows [0, 1], [4, 5], then channel 1; patch (0, 1) the
        // columns 2, 3.
        let want = [
            0.0, 1.0, 4.0, 5.0, 10.0, 11.0, 14.0, 15.0, //
            2.0, 3.0, 6.0, 7.0, 12.0, 13.0, 16.0, 17.0,
        ];
        assert_eq!(patches.to_vec_f64().unwrap(), want);
        // The embedding is `proj` of each patch: patch · Wᵀ + b.
        let y = pe.forward(&x).unwrap();
        assert_eq!(y.shape(), [1, 2, 3]);
        let w = pe.proj().weight().to_vec_f64().unwrap();
        let b = match pe.proj() {
            LinearLayer::Plain(l) => l.bias().unwrap().to_vec_f64().unwrap(),
            LinearLayer::SigmaReparam(_) => unreachable!("built plain"),
        };
        let y = y.to_vec_f64().unwrap();
        for (n, patch) in want.chunks(8).enumerate() {
            for o in 0..3 {
                let dot: f64 = patch.iter().zip(&w[o * 8..]).map(|(a, b)| a * b).sum();
                assert!((y[n * 3 + o] - (dot + b[o])).abs() < 1e-12, "{y:?}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let pe = embedding(1, 4, 2, LinearKind::Plain, 0);
        for shape in [&[1, 1, 8, 6][..], &[1, 1, 6, 8], &[1, 2, 8, 8], &[1, 8, 8]] {
            let err = pe.forward(&Tensor::zeros(shape, DType::F64)).unwrap_err();
            assert!(
                err.to_string().contains(&format!("got shape {shape:?}")),
                "{err}"
            );
        }
        for (c, p) in [(0, 2), (1, 0)] {
            let err = PatchEmbedding::new(c, p, 2, |_, _| unreachable!()).unwrap_err();
            assert!(err.to_string().contains("must be > 0"), "{err}");
        }
    }

    /// Finite differences with respect to the images, through plain and σReparam
    /// (eval mode, so every call sees the same state) projections, in 2 × 3 patches of 2×2.
    #[test]
    fn gradcheck_patch_embedding() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = Tensor::randn(&[2, 3, 4, 6], 0.0, 1.0, DType::F64, &mut rng);
        for kind in [
            LinearKind::Plain,
            LinearKind::SigmaReparam(GammaInit::Sigma),
        ] {
            let pe = embedding(3, 2, 5, kind, 1);
            pe.set_training(false);
            assert_eq!(pe.forward(&x).unwrap().shape(), [2, 6, 5]);
            gradcheck(|t| Ok(pe.forward(&t[0]).unwrap()), std::slice::from_ref(&x)).unwrap();
        }
    }
}
