//! SimCLR's random views of one-channel images (Chen et al. 2020, appendix A; torchvision's
//! `RandomResizedCrop`, `RandomHorizontalFlip`, `ColorJitter`, `GaussianBlur`), seeded, and
//! the dataset normalization that the views and the linear probe's inputs share.

use crate::images::Images;
use crate::{Error, Result};
use image::imageops::{self, FilterType};
use image::GrayImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Attempts at a crop box inside the image before falling back to the whole image
/// (torchvision's `RandomResizedCrop.get_params`).
const CROP_ATTEMPTS: usize = 10;

/// How the two views of an image are drawn. In this order, each image independently:
///
/// 1. a random resized crop (torchvision `RandomResizedCrop(size, scale=(crop_min, 1),
///    ratio=(3/4, 4/3))`): a box of a uniformly drawn fraction of the image's area and a
///    log-uniform aspect ratio, at a uniform position, resized back to the image size with
///    a bilinear (triangle) filter, antialiased when shrinking, as PIL;
/// 2. a horizontal flip with probability 1/2 when `flip`;
/// 3. with probability `blur`, a Gaussian blur of σ uniform in [0.1, 2] pixels;
/// 4. with probability `jitter`, brightness then contrast jitter: intensities multiplied by
///    a factor uniform in `[1 − brightness, 1 + brightness]`, then moved away from (or
///    towards) the image's mean by a factor uniform in `[1 − contrast, 1 + contrast]`
///    (PIL's `ImageEnhance`, as torchvision's `ColorJitter` applies them), clamped to
///    [0, 255].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewAugment {
    /// Smallest fraction of the image's area a crop keeps (SimCLR: 0.08 on ImageNet).
    pub crop_min: f64,
    /// Mirror left–right with probability 1/2.
    pub flip: bool,
    /// Probability of the colour jitter (SimCLR: 0.8).
    pub jitter: f64,
    /// Brightness jitter strength (SimCLR: 0.8 × its strength s = 1).
    pub brightness: f64,
    /// Contrast jitter strength.
    pub contrast: f64,
    /// Probability of the Gaussian blur (SimCLR: 0.5 on ImageNet, none on CIFAR).
    pub blur: f64,
}

/// The random choices for one view.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ViewDraw {
    /// Crop box: top row, left column, height, width.
    top: u32,
    left: u32,
    height: u32,
    width: u32,
    flip: bool,
    /// σ of the blur in pixels, when blurred.
    blur: Option<f32>,
    /// Brightness and contrast factors (1 when not jittered).
    brightness: f32,
    contrast: f32,
}

impl ViewAugment {
    /// Errors ([`Error::Config`], naming the flag) unless `crop_min` is in (0, 1], the
    /// probabilities in [0, 1] and the strengths in [0, 1].
    pub fn validate(&self) -> Result<()> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let checks = [
            (
                "--crop-min",
                self.crop_min,
                self.crop_min > 0.0 && self.crop_min <= 1.0,
            ),
            ("--jitter", self.jitter, unit(self.jitter)),
            ("--brightness", self.brightness, unit(self.brightness)),
            ("--contrast", self.contrast, unit(self.contrast)),
            ("--blur", self.blur, unit(self.blur)),
        ];
        match checks.iter().find(|c| !c.2) {
            Some((flag, v, _)) => Err(Error::Config(format!(
                "{flag} must be in {} (got {v})",
                if *flag == "--crop-min" {
                    "(0, 1]"
                } else {
                    "[0, 1]"
                }
            ))),
            None => Ok(()),
        }
    }

    /// The draws of one view of an `h × w` image.
    fn draw(&self, h: u32, w: u32, rng: &mut ChaCha8Rng) -> ViewDraw {
        let (top, left, height, width) = self.crop_box(h, w, rng);
        let flip = self.flip && rng.gen_bool(0.5);
        let blur = (rng.gen::<f64>() < self.blur).then(|| rng.gen_range(0.1f32..=2.0));
        let (brightness, contrast) = if rng.gen::<f64>() < self.jitter {
            let factor = |s: f64, rng: &mut ChaCha8Rng| {
                if s > 0.0 {
                    rng.gen_range((1.0 - s) as f32..=(1.0 + s) as f32)
                } else {
                    1.0
                }
            };
            (factor(self.brightness, rng), factor(self.contrast, rng))
        } else {
            (1.0, 1.0)
        };
        ViewDraw {
            top,
            left,
            height,
            width,
            flip,
            blur,
            brightness,
            contrast,
        }
    }

    /// torchvision's `RandomResizedCrop.get_params` with ratio (3/4, 4/3): up to
    /// [`CROP_ATTEMPTS`] boxes of area `U(crop_min, 1)·h·w` and aspect `exp U(ln ¾, ln ⁴⁄₃)`,
    /// the first that fits taken at a uniform position; else the whole image.
    fn crop_box(&self, h: u32, w: u32, rng: &mut ChaCha8Rng) -> (u32, u32, u32, u32) {
        let area = f64::from(h) * f64::from(w);
        let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        for _ in 0..CROP_ATTEMPTS {
            let target = area * rng.gen_range(self.crop_min..=1.0);
            let aspect = rng.gen_range(lo..=hi).exp();
            let cw = (target * aspect).sqrt().round() as u32;
            let ch = (target / aspect).sqrt().round() as u32;
            if (1..=w).contains(&cw) && (1..=h).contains(&ch) {
                return (rng.gen_range(0..=h - ch), rng.gen_range(0..=w - cw), ch, cw);
            }
        }
        (0, 0, h, w)
    }
}

/// Per-pixel mean and standard deviation of a set of images on the [0, 1] scale (pixel /
/// 255), over all their pixels: the normalization shared by the views and the probe
/// (torchvision's `Normalize(mean, std)`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PixelStats {
    /// Mean intensity in [0, 1].
    pub mean: f64,
    /// Standard deviation (population), at least 1e-6.
    pub std: f64,
}

impl PixelStats {
    /// The statistics of every pixel of `images` (exact integer sums).
    pub fn of(images: &Images) -> PixelStats {
        let n = images.pixels.len().max(1) as f64;
        let sum: u64 = images.pixels.iter().map(|&p| u64::from(p)).sum();
        let sq: u64 = images.pixels.iter().map(|&p| u64::from(p).pow(2)).sum();
        let mean = sum as f64 / n / 255.0;
        let var = (sq as f64 / n / (255.0 * 255.0) - mean * mean).max(0.0);
        PixelStats {
            mean,
            std: var.sqrt().max(1e-6),
        }
    }

    /// `(v / 255 − mean) / std` for intensities `v` in [0, 255].
    fn apply(&self, img: &mut [f32]) {
        let (m, k) = (
            (255.0 * self.mean) as f32,
            (1.0 / (255.0 * self.std)) as f32,
        );
        for v in img {
            *v = (*v - m) * k;
        }
    }
}

/// The images at `indices`, not augmented, normalized by `stats`: `[b, 1, height, width]`
/// row-major f32 (the probe's and the random-view-free evaluation's inputs).
pub fn plain(images: &Images, indices: &[usize], stats: &PixelStats) -> Vec<f32> {
    let m = images.height * images.width;
    let mut out = vec![0f32; indices.len() * m];
    if m > 0 {
        out.par_chunks_mut(m)
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| {
                for (o, &p) in dst.iter_mut().zip(&images.pixels[i * m..(i + 1) * m]) {
                    *o = f32::from(p);
                }
                stats.apply(dst);
            });
    }
    out
}

/// Two random views of each image at `indices`, normalized by `stats`: `[2b, 1, height,
/// width]` row-major f32 where rows `i` and `b + i` are the two views of image
/// `indices[i]` (the layout [`nn::simclr::nt_xent`] expects).
///
/// All draws come from `rng` first, in the order: every first view, then every second
/// view, each as [`ViewAugment`] lists its steps; the views are then rendered in parallel,
/// so the batch depends only on `indices` and the rng state, never on the number of
/// threads. Errors ([`Error::Data`]) on an index `≥ len`.
pub fn two_views(
    images: &Images,
    indices: &[usize],
    augment: &ViewAugment,
    stats: &PixelStats,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= images.len()) {
        return Err(Error::Data(format!(
            "view of image {bad}: only {} images",
            images.len()
        )));
    }
    let (h, w) = (images.height, images.width);
    let (hu, wu) = (
        u32::try_from(h).map_err(|_| Error::Data(format!("image height {h} too large")))?,
        u32::try_from(w).map_err(|_| Error::Data(format!("image width {w} too large")))?,
    );
    let jobs: Vec<(usize, ViewDraw)> = (0..2)
        .flat_map(|_| indices.iter())
        .map(|&i| (i, augment.draw(hu, wu, rng)))
        .collect();
    let m = h * w;
    let mut out = vec![0f32; jobs.len() * m];
    if m > 0 {
        out.par_chunks_mut(m)
            .zip(jobs.par_iter())
            .for_each(|(dst, &(i, d))| {
                let src = GrayImage::from_raw(wu, hu, images.pixels[i * m..(i + 1) * m].to_vec())
                    .expect("an image holds height × width pixels");
                render(&src, &d, dst);
                stats.apply(dst);
            });
    }
    Ok(out)
}

/// Render one view of `src` with the draws `d` into `dst` as intensities in [0, 255].
fn render(src: &GrayImage, d: &ViewDraw, dst: &mut [f32]) {
    let (w, h) = src.dimensions();
    let crop = imageops::crop_imm(src, d.left, d.top, d.width, d.height).to_image();
    let mut img = if (d.width, d.height) == (w, h) {
        crop
    } else {
        imageops::resize(&crop, w, h, FilterType::Triangle)
    };
    if d.flip {
        imageops::flip_horizontal_in_place(&mut img);
    }
    if let Some(sigma) = d.blur {
        img = imageops::blur(&img, sigma);
    }
    for (o, p) in dst.iter_mut().zip(img.as_raw()) {
        *o = (f32::from(*p) * d.brightness).min(255.0);
    }
    if d.contrast != 1.0 {
        let mean = dst.iter().sum::<f32>() / dst.len() as f32;
        for o in dst.iter_mut() {
            *o = (mean + d.contrast * (*o - mean)).clamp(0.0, 255.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::tests::images;
    use rand::SeedableRng;

    const AUG: ViewAugment = ViewAugment {
        crop_min: 0.3,
        flip: true,
        jitter: 0.8,
        brightness: 0.4,
        contrast: 0.4,
        blur: 0.5,
    };

    /// Shapes, the seed's reproducibility at any thread count, two views that differ, and
    /// finite, normalized values.
    #[test]
    fn views_keep_shapes_and_follow_the_seed() {
        let img = images(5, 12, 10);
        let stats = PixelStats::of(&img);
        let idx = [4, 0, 2];
        let make = |seed: u64| {
            two_views(
                &img,
                &idx,
                &AUG,
                &stats,
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
            .unwrap()
        };
        let a = make(1);
        assert_eq!(a.len(), 2 * 3 * 12 * 10);
        assert!(a.iter().all(|v| v.is_finite()));
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(a, one.install(|| make(1)), "depends on the thread count");
        assert_ne!(a, make(2));
        let m = 12 * 10;
        for i in 0..3 {
            assert_ne!(
                a[i * m..(i + 1) * m],
                a[(3 + i) * m..(4 + i) * m],
                "view pair {i}"
            );
        }
    }

    /// With no augmentation a view is the normalized image itself, and the statistics
    /// normalize the set to mean 0 and standard deviation 1.
    #[test]
    fn identity_views_and_pixel_stats() {
        let img = images(4, 6, 6);
        let stats = PixelStats::of(&img);
        let none = ViewAugment {
            crop_min: 1.0,
            flip: false,
            jitter: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            blur: 0.0,
        };
        let idx: Vec<usize> = (0..4).collect();
        let v = two_views(&img, &idx, &none, &stats, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        // A crop of the whole area with aspect ≠ 1 does not fit a square image, so the crop
        // is the whole image once the ten attempts fail or one draws aspect 1.
        let p = plain(&img, &idx, &stats);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.05);
        assert!(close(&v[..p.len()], &p) && close(&v[p.len()..], &p));
        let n = p.len() as f64;
        let mean = p.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = p
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }

    #[test]
    fn crops_stay_inside_and_bad_settings_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..500 {
            let d = AUG.draw(28, 20, &mut rng);
            assert!(d.top + d.height <= 28 && d.left + d.width <= 20, "{d:?}");
            assert!(d.height >= 1 && d.width >= 1);
            assert!((0.6..=1.4).contains(&d.brightness) && (0.6..=1.4).contains(&d.contrast));
        }
        for (bad, flag) in [
            (
                ViewAugment {
                    crop_min: 0.0,
                    ..AUG
                },
                "--crop-min must be in (0, 1]",
            ),
            (
                ViewAugment { jitter: 1.5, ..AUG },
                "--jitter must be in [0, 1]",
            ),
            (
                ViewAugment {
                    blur: f64::NAN,
                    ..AUG
                },
                "--blur must be in [0, 1]",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        let img = images(2, 4, 4);
        let e = two_views(&img, &[2], &AUG, &PixelStats::of(&img), &mut rng).unwrap_err();
        assert!(
            e.to_string().contains("view of image 2: only 2 images"),
            "{e}"
        );
    }
}
