//! Labelled one-channel images (MNIST, Fashion-MNIST): loading pairs of IDX files, a seeded
//! train/validation split, and batches of normalized `[batch, 1, height, width]` f32 inputs
//! with random-crop and horizontal-flip augmentation.

use crate::idx::read_idx;
use crate::train::seeded;
use crate::{Error, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The ten Fashion-MNIST classes, by label (Xiao, Rasul & Vollgraf 2017,
/// <https://github.com/zalandoresearch/fashion-mnist#labels>).
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// `n` labelled images of `height × width` pixels, one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// Pixel intensities 0–255, row-major `[n, height, width]`.
    pub pixels: Vec<u8>,
    /// One class per image, `[n]`.
    pub labels: Vec<u8>,
}

/// Random crop and flip, drawn independently for every image of a batch.
///
/// Crop as torchvision's `RandomCrop(size, padding=pad)`: the image is padded with `pad` zero
/// pixels on every side, then a `height × width` window at uniformly random offsets
/// `0..=2·pad` (vertical, horizontal) is cut out of it; `pad = 0` leaves the image as it is.
/// Then, when `flip`, the image is mirrored left–right with probability 1/2 (torchvision's
/// `RandomHorizontalFlip()`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Zero pixels added on each side before cropping.
    pub pad: usize,
    /// Mirror left–right with probability 1/2.
    pub flip: bool,
}

/// The random choices for one image: crop offsets into the padded image, and the flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Draw {
    dy: usize,
    dx: usize,
    flip: bool,
}

const NO_DRAW: Draw = Draw {
    dy: 0,
    dx: 0,
    flip: false,
};

/// ε added to each image's variance before the square root.
const NORM_EPS: f64 = 1e-5;

/// Load an image file (IDX, rank 3 `[n, height, width]`) and its label file (IDX, rank 1
/// `[n]`), each plain or gzipped (see [`read_idx`]).
///
/// Errors, besides those of [`read_idx`] ([`Error::Data`], each naming the file): dimensions
/// of the wrong rank or with a zero height or width ("wrong dims"); no images; image and
/// label counts that differ; a label `≥ n_classes` (the first such index and value).
pub fn load_pair(images: &Path, labels: &Path, n_classes: usize) -> Result<Images> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    let (n, height, width) = match img.dims[..] {
        [n, h, w] if h > 0 && w > 0 => (n, h, w),
        _ => {
            return Err(Error::Data(format!(
                "{}: wrong dims {:?} for an image file: expected 3, [images, height, width], \
                 with height and width at least 1",
                images.display(),
                img.dims
            )))
        }
    };
    if lab.dims.len() != 1 {
        return Err(Error::Data(format!(
            "{}: wrong dims {:?} for a label file: expected 1, [labels]",
            labels.display(),
            lab.dims
        )));
    }
    if n == 0 {
        return Err(Error::Data(format!("{} holds no images", images.display())));
    }
    if lab.dims[0] != n {
        return Err(Error::Data(format!(
            "{} holds {n} images but {} holds {} labels; they must be a matching pair",
            images.display(),
            labels.display(),
            lab.dims[0]
        )));
    }
    if let Some((i, &l)) = lab
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= n_classes)
    {
        return Err(Error::Data(format!(
            "{}: label {i} is {l}, outside the {n_classes} classes 0..={}",
            labels.display(),
            n_classes.saturating_sub(1)
        )));
    }
    Ok(Images {
        height,
        width,
        pixels: img.data,
        labels: lab.data,
    })
}

/// `dir/stem` if it exists, else `dir/stem.gz` if that exists; otherwise
/// [`Error::DataMissing`] naming both.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if plain.is_file() {
        return Ok(plain);
    }
    if gz.is_file() {
        return Ok(gz);
    }
    Err(Error::DataMissing {
        path: gz,
        hint: format!(
            "looked for {stem} and {stem}.gz in {}; the directory needs \
             train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and \
             t10k-labels-idx1-ubyte, each plain or gzipped (scripts/fetch-fashion-mnist.sh \
             fetches Fashion-MNIST)",
            dir.display()
        ),
    })
}

/// Load the training and test sets of an MNIST-style directory (train, test):
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
/// `t10k-labels-idx1-ubyte`, each plain or with `.gz` (the plain file when both exist), as
/// the MNIST page and `scripts/fetch-fashion-mnist.sh` name them.
///
/// Errors: [`Error::DataMissing`] when `dir` or a file is missing (listing what was looked
/// for), those of [`load_pair`], and [`Error::Data`] when the training and test images differ
/// in size.
pub fn load_dir(dir: &Path, n_classes: usize) -> Result<(Images, Images)> {
    if !dir.is_dir() {
        return Err(Error::DataMissing {
            path: dir.to_path_buf(),
            hint: "expected a directory holding train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                   t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or gzipped \
                   (scripts/fetch-fashion-mnist.sh fetches Fashion-MNIST)"
                .to_string(),
        });
    }
    let train_images = find(dir, "train-images-idx3-ubyte")?;
    let train_labels = find(dir, "train-labels-idx1-ubyte")?;
    let test_images = find(dir, "t10k-images-idx3-ubyte")?;
    let test_labels = find(dir, "t10k-labels-idx1-ubyte")?;
    let train = load_pair(&train_images, &train_labels, n_classes)?;
    let test = load_pair(&test_images, &test_labels, n_classes)?;
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::Data(format!(
            "{} holds {}×{} images but {} holds {}×{}; training and test images must have one size",
            train_images.display(),
            train.height,
            train.width,
            test_images.display(),
            test.height,
            test.width
        )));
    }
    Ok((train, test))
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image (`height · width`).
    fn image_len(&self) -> usize {
        self.height * self.width
    }

    /// The images at `indices`, in that order.
    fn gather(&self, indices: &[usize]) -> Images {
        let m = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * m);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * m..(i + 1) * m]);
        }
        Images {
            height: self.height,
            width: self.width,
            pixels,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// A random held-out split (train, val): `n_val` images chosen uniformly without
    /// replacement with `rng` form the validation set, the other `len − n_val` the training
    /// set; each keeps the images' original order. The same rng state gives the same split.
    ///
    /// Errors ([`Error::Data`]) when `n_val ≥ len`, which would leave nothing to train on.
    pub fn split(&self, n_val: usize, rng: &mut impl Rng) -> Result<(Images, Images)> {
        let n = self.len();
        if n_val >= n {
            return Err(Error::Data(format!(
                "cannot hold out {n_val} validation images from {n}: at least one must remain \
                 for training"
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let (val, train) = order.split_at_mut(n_val);
        val.sort_unstable();
        train.sort_unstable();
        Ok((self.gather(train), self.gather(val)))
    }

    /// The first `n` images (all of them when `n ≥ len`), for tests and quick runs.
    pub fn subset(&self, n: usize) -> Images {
        let n = n.min(self.len());
        Images {
            height: self.height,
            width: self.width,
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// The images at `indices` as a batch: inputs `[b, 1, height, width]` row-major f32 and
    /// their labels `[b]`, `b = indices.len()`.
    ///
    /// Each image is augmented when `augment` is given (see [`Augment`]), then scaled to
    /// [0, 1] (pixel / 255) and normalized on its own to zero mean and unit variance:
    /// `(x − mean) / sqrt(var + 1e-5)`, `var` the population variance over its pixels (so a
    /// constant image becomes zeros). Per image, in index order, the rng gives the vertical
    /// then horizontal crop offset (only when `pad > 0`), then the flip (only when `flip`); all
    /// draws are made before the images are built in parallel, so the batch depends only on
    /// `indices` and the rng state, never on the number of threads.
    ///
    /// Panics when an index is `≥ len` (a caller's bug).
    pub fn batch(
        &self,
        indices: &[usize],
        augment: Option<(&Augment, &mut ChaCha8Rng)>,
    ) -> (Vec<f32>, Vec<usize>) {
        let (h, w, m) = (self.height, self.width, self.image_len());
        let n = self.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            panic!("Images::batch: index {bad} out of range for {n} images");
        }
        let (pad, draws) = match augment {
            None => (0, vec![NO_DRAW; indices.len()]),
            Some((a, rng)) => {
                let draws = indices
                    .iter()
                    .map(|_| {
                        let (dy, dx) = if a.pad > 0 {
                            (rng.gen_range(0..=2 * a.pad), rng.gen_range(0..=2 * a.pad))
                        } else {
                            (0, 0)
                        };
                        let flip = a.flip && rng.gen_bool(0.5);
                        Draw { dy, dx, flip }
                    })
                    .collect();
                (a.pad, draws)
            }
        };
        let mut out = vec![0f32; indices.len() * m];
        if m > 0 {
            out.par_chunks_mut(m)
                .with_min_len(32)
                .zip(indices.par_iter().zip(draws.par_iter()))
                .for_each(|(dst, (&i, d))| {
                    let src = &self.pixels[i * m..(i + 1) * m];
                    let (sum, sum_sq) = render(src, h, w, pad, d, dst);
                    normalize(dst, sum, sum_sq);
                });
        }
        let labels = indices.iter().map(|&i| self.labels[i] as usize).collect();
        (out, labels)
    }
}

/// Write `src` (`h × w`), cropped at offsets `d` into its zero-padded version and flipped if
/// `d.flip`, into `dst` as raw intensities 0–255; return the sum and the sum of squares of
/// those intensities (exact).
fn render(src: &[u8], h: usize, w: usize, pad: usize, d: &Draw, dst: &mut [f32]) -> (u64, u64) {
    // Output column x reads source column x + dx − pad; these x are inside the source.
    let x0 = pad.saturating_sub(d.dx).min(w);
    let x1 = (w + pad).saturating_sub(d.dx).min(w).max(x0);
    let (mut sum, mut sum_sq) = (0u64, 0u64);
    for (y, row) in dst.chunks_exact_mut(w).enumerate() {
        // Output row y reads source row y + dy − pad.
        let sy = (y + d.dy).checked_sub(pad).filter(|&sy| sy < h);
        match sy {
            Some(sy) if x0 < x1 => {
                row[..x0].fill(0.0);
                row[x1..].fill(0.0);
                // x0 ≥ pad − dx, so this does not underflow.
                let s0 = sy * w + x0 + d.dx - pad;
                for (o, &p) in row[x0..x1].iter_mut().zip(&src[s0..s0 + (x1 - x0)]) {
                    *o = p as f32;
                    sum += p as u64;
                    sum_sq += p as u64 * p as u64;
                }
            }
            _ => row.fill(0.0),
        }
        if d.flip {
            row.reverse();
        }
    }
    (sum, sum_sq)
}

/// Turn raw intensities 0–255 with the given exact sum and sum of squares into
/// `(v/255 − mean) / sqrt(var + 1e-5)`, mean and population variance those of `v/255`.
/// Computed as `(v − m)·k` with `m` the raw mean, so a constant image gives exact zeros.
fn normalize(img: &mut [f32], sum: u64, sum_sq: u64) {
    let n = img.len() as u128;
    // var·n²·255² = n·Σv² − (Σv)², exactly.
    let var_num = n * sum_sq as u128 - sum as u128 * sum as u128;
    let scale = 255.0 * img.len() as f64;
    let var = var_num as f64 / (scale * scale);
    let m = (sum as f64 / img.len() as f64) as f32;
    let k = (1.0 / (255.0 * (var + NORM_EPS).sqrt())) as f32;
    for v in img.iter_mut() {
        *v = (*v - m) * k;
    }
}

/// ChaCha stream of the seed from which epoch `e`'s order is drawn: `EPOCH_STREAM + e`
/// (streams 0–3 are [`seeded`]'s).
const EPOCH_STREAM: u64 = 1 << 32;

/// Where the training batches stand: epoch `epoch`'s order, of which `pos` images are used.
#[derive(Debug, Clone)]
pub struct Epochs {
    seed: u64,
    /// The epoch being drawn from (0 first).
    pub epoch: u64,
    /// Images of it used.
    pub pos: usize,
    order: Vec<usize>,
}

impl Epochs {
    /// Epoch `epoch` of `n` images, `pos` of them used.
    pub fn at(seed: u64, n: usize, epoch: u64, pos: usize) -> Epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut seeded(seed, EPOCH_STREAM + epoch));
        Epochs {
            seed,
            epoch,
            pos,
            order,
        }
    }

    /// The next `b` indices; an epoch's last images that do not fill a batch are skipped
    /// (PyTorch's `drop_last`), then the next epoch's order is drawn.
    pub fn next(&mut self, b: usize) -> &[usize] {
        if self.pos + b > self.order.len() {
            *self = Epochs::at(self.seed, self.order.len(), self.epoch + 1, 0);
        }
        self.pos += b;
        &self.order[self.pos - b..self.pos]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::idx::tests::{gzip, idx_bytes, TempDir};
    use rand::SeedableRng;

    /// `n` images of `h × w` with pixel `(k, y, x) = (k·31 + y·w + x)·7 mod 256` and labels
    /// `k mod 10`.
    pub(crate) fn images(n: usize, h: usize, w: usize) -> Images {
        Images {
            height: h,
            width: w,
            pixels: (0..n * h * w)
                .map(|i| ((i * 7 + i / (h * w) * 31) % 256) as u8)
                .collect(),
            labels: (0..n).map(|k| (k % 10) as u8).collect(),
        }
    }

    /// [`normalize`] applied to a copy of `raw` (intensities 0–255).
    fn normalized(raw: &[f32]) -> Vec<f32> {
        let mut v = raw.to_vec();
        let sum = raw.iter().map(|&r| r as u64).sum();
        let sum_sq = raw.iter().map(|&r| (r as u64).pow(2)).sum();
        normalize(&mut v, sum, sum_sq);
        v
    }

    /// The batch of one image with a given draw, before normalization.
    fn rendered(img: &Images, pad: usize, d: Draw) -> Vec<f32> {
        let mut dst = vec![0.0; img.height * img.width];
        let (sum, sum_sq) = render(&img.pixels, img.height, img.width, pad, &d, &mut dst);
        assert_eq!(sum, dst.iter().map(|&v| v as u64).sum::<u64>());
        assert_eq!(sum_sq, dst.iter().map(|&v| (v as u64).pow(2)).sum::<u64>());
        dst
    }

    fn write(dir: &TempDir, name: &str, dims: &[u32], data: &[u8]) -> PathBuf {
        let path = dir.0.join(name);
        let bytes = idx_bytes(dims, data);
        let bytes = if name.ends_with(".gz") {
            gzip(&bytes)
        } else {
            bytes
        };
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn load_pair_reads_and_checks() {
        let dir = TempDir::new("images-pair");
        let px: Vec<u8> = (0..3 * 2 * 2).collect();
        let img = write(&dir, "img.gz", &[3, 2, 2], &px);
        let lab = write(&dir, "lab", &[3], &[0, 9, 4]);
        let got = load_pair(&img, &lab, 10).unwrap();
        assert_eq!((got.len(), got.height, got.width), (3, 2, 2));
        assert_eq!((got.pixels, got.labels), (px.clone(), vec![0, 9, 4]));

        let err = |i: &Path, l: &Path, c: usize| load_pair(i, l, c).unwrap_err().to_string();
        // Label out of range: the first one named.
        let e = err(&img, &write(&dir, "bad-lab", &[3], &[0, 10, 12]), 10);
        assert!(e.contains("bad-lab") && e.contains("label 1 is 10"), "{e}");
        // Counts differ.
        let e = err(&img, &write(&dir, "four", &[4], &[0, 1, 2, 3]), 10);
        assert!(
            e.contains("3 images") && e.contains("4 labels") && e.contains("four"),
            "{e}"
        );
        // Wrong ranks.
        let flat = write(&dir, "flat", &[12], &px);
        let e = err(&flat, &lab, 10);
        assert!(e.contains("wrong dims [12]") && e.contains("flat"), "{e}");
        let e = err(&img, &write(&dir, "lab2d", &[3, 1], &[0, 1, 2]), 10);
        assert!(
            e.contains("wrong dims [3, 1]") && e.contains("lab2d"),
            "{e}"
        );
        let e = err(&write(&dir, "zero-w", &[3, 2, 0], &[]), &lab, 10);
        assert!(e.contains("wrong dims [3, 2, 0]"), "{e}");
        // No images.
        let e = err(
            &write(&dir, "none", &[0, 2, 2], &[]),
            &write(&dir, "none-lab", &[0], &[]),
            10,
        );
        assert!(e.contains("none") && e.contains("no images"), "{e}");
    }

    #[test]
    fn load_dir_finds_plain_or_gzipped_files() {
        let dir = TempDir::new("images-dir");
        let e = load_dir(&dir.0.join("absent"), 10).unwrap_err();
        assert!(matches!(e, Error::DataMissing { .. }), "{e:?}");
        write(&dir, "train-images-idx3-ubyte.gz", &[2, 2, 3], &[1; 12]);
        write(&dir, "train-labels-idx1-ubyte", &[2], &[1, 2]);
        write(&dir, "t10k-images-idx3-ubyte", &[1, 2, 3], &[2; 6]);
        let e = load_dir(&dir.0, 10).unwrap_err();
        assert!(matches!(e, Error::DataMissing { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("t10k-labels-idx1-ubyte and t10k-labels-idx1-ubyte.gz"),
            "{msg}"
        );
        write(&dir, "t10k-labels-idx1-ubyte.gz", &[1], &[3]);
        let (train, test) = load_dir(&dir.0, 10).unwrap();
        assert_eq!((train.len(), test.len()), (2, 1));
        assert_eq!((train.labels, test.pixels), (vec![1, 2], vec![2; 6]));
        // The plain file wins over the gzipped one.
        write(&dir, "t10k-labels-idx1-ubyte", &[1], &[7]);
        assert_eq!(load_dir(&dir.0, 10).unwrap().1.labels, vec![7]);
        // Sizes must agree.
        write(&dir, "t10k-images-idx3-ubyte", &[1, 3, 2], &[2; 6]);
        let e = load_dir(&dir.0, 10).unwrap_err().to_string();
        assert!(e.contains("2×3") && e.contains("3×2"), "{e}");
    }

    #[test]
    fn split_is_disjoint_complete_and_seeded() {
        // Labels that identify the image: pixel 0 of image k is k (n ≤ 256).
        let n = 100;
        let mut data = images(n, 2, 2);
        for k in 0..n {
            data.pixels[k * 4] = k as u8;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (train, val) = data.split(30, &mut rng).unwrap();
        assert_eq!((train.len(), val.len()), (70, 30));
        assert_eq!((train.pixels.len(), val.pixels.len()), (280, 120));
        let ids =
            |s: &Images| -> Vec<usize> { (0..s.len()).map(|k| s.pixels[k * 4] as usize).collect() };
        let (t, v) = (ids(&train), ids(&val));
        // Each keeps the original order, and labels travel with their images.
        assert!(t.windows(2).all(|p| p[0] < p[1]) && v.windows(2).all(|p| p[0] < p[1]));
        assert!(t
            .iter()
            .zip(&train.labels)
            .all(|(&k, &l)| l as usize == k % 10));
        assert!(v
            .iter()
            .zip(&val.labels)
            .all(|(&k, &l)| l as usize == k % 10));
        let mut all = [t.clone(), v.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
        assert_ne!(v, (0..30).collect::<Vec<_>>(), "not random");
        // Same seed, same split; another seed, another.
        let again = data.split(30, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(again, (train, val));
        let other = data.split(30, &mut ChaCha8Rng::seed_from_u64(4)).unwrap();
        assert_ne!(ids(&other.1), v);
        // Edges.
        assert_eq!(data.split(0, &mut rng).unwrap().0, data);
        assert_eq!(data.split(99, &mut rng).unwrap().0.len(), 1);
        assert!(data.split(100, &mut rng).is_err());
        assert!(data.split(1000, &mut rng).is_err());
    }

    #[test]
    fn subset_takes_the_first_images() {
        let data = images(10, 3, 2);
        let s = data.subset(4);
        assert_eq!(s.len(), 4);
        assert_eq!(
            (&s.pixels[..], &s.labels[..]),
            (&data.pixels[..24], &data.labels[..4])
        );
        assert_eq!(data.subset(50), data);
        assert!(data.subset(0).is_empty());
    }

    #[test]
    fn no_augmentation_and_pad_zero_are_the_identity_before_normalizing() {
        let data = images(5, 4, 3);
        let idx = [3, 0, 4];
        let (x, y) = data.batch(&idx, None);
        assert_eq!(y, vec![3, 0, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let plain = Augment {
            pad: 0,
            flip: false,
        };
        let (xa, ya) = data.batch(&idx, Some((&plain, &mut rng)));
        assert_eq!((&xa, &ya), (&x, &y));
        for (b, &k) in idx.iter().enumerate() {
            let raw: Vec<f32> = data.pixels[k * 12..(k + 1) * 12]
                .iter()
                .map(|&p| p as f32)
                .collect();
            assert_eq!(x[b * 12..(b + 1) * 12], normalized(&raw)[..]);
        }
        // Drawing nothing leaves the rng where it was.
        assert_eq!(rng, ChaCha8Rng::seed_from_u64(1));
    }

    #[test]
    fn flip_mirrors_each_row() {
        let data = images(1, 3, 4);
        let out = rendered(
            &data,
            0,
            Draw {
                dy: 0,
                dx: 0,
                flip: true,
            },
        );
        for y in 0..3 {
            for x in 0..4 {
                assert_eq!(out[y * 4 + x], data.pixels[y * 4 + 3 - x] as f32);
            }
        }
        // Over many draws, about half the images flip, and flipped ones are mirrors.
        let data = images(1, 2, 5);
        let aug = Augment { pad: 0, flip: true };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (x, _) = data.batch(&[0; 400], Some((&aug, &mut rng)));
        let (straight, _) = data.batch(&[0], None);
        let mirror: Vec<f32> = straight
            .chunks(5)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        let flipped = x
            .chunks(10)
            .filter(|&img| {
                assert!(img == straight || img == mirror);
                img == mirror
            })
            .count();
        assert!((150..250).contains(&flipped), "{flipped} of 400 flipped");
    }

    #[test]
    fn crop_shifts_exactly() {
        // 1 2 3
        // 4 5 6
        // 7 8 9
        let data = Images {
            height: 3,
            width: 3,
            pixels: (1..=9).collect(),
            labels: vec![0],
        };
        let d = |dy, dx| Draw {
            dy,
            dx,
            flip: false,
        };
        // Offsets (pad, pad) = centred = the image itself.
        assert_eq!(
            rendered(&data, 1, d(1, 1)),
            [1., 2., 3., 4., 5., 6., 7., 8., 9.]
        );
        // (0, 0): the window starts in the padding's corner: shifted down and right.
        assert_eq!(
            rendered(&data, 1, d(0, 0)),
            [0., 0., 0., 0., 1., 2., 0., 4., 5.]
        );
        // (2, 2): shifted up and left.
        assert_eq!(
            rendered(&data, 1, d(2, 2)),
            [5., 6., 0., 8., 9., 0., 0., 0., 0.]
        );
        // (0, 2): down and left.
        assert_eq!(
            rendered(&data, 1, d(0, 2)),
            [0., 0., 0., 2., 3., 0., 5., 6., 0.]
        );
        // pad 2, (4, 1): up by two, right by one.
        assert_eq!(
            rendered(&data, 2, d(4, 1)),
            [0., 7., 8., 0., 0., 0., 0., 0., 0.]
        );
        // A crop then a flip: (1, 0) shifts right; the flip mirrors the result.
        let cf = Draw {
            dy: 1,
            dx: 0,
            flip: true,
        };
        assert_eq!(rendered(&data, 1, cf), [2., 1., 0., 5., 4., 0., 8., 7., 0.]);
        // Padding wider than the image: a window entirely in the padding is all zeros.
        assert_eq!(rendered(&data, 5, d(0, 0)), [0.; 9]);
        assert_eq!(
            rendered(&data, 5, d(5, 5)),
            [1., 2., 3., 4., 5., 6., 7., 8., 9.]
        );
    }

    #[test]
    fn crop_offsets_cover_the_range_uniformly() {
        // A single bright pixel at the centre of a 5×5 image shows the crop offset.
        let mut pixels = vec![0u8; 25];
        pixels[12] = 255;
        let data = Images {
            height: 5,
            width: 5,
            pixels,
            labels: vec![0],
        };
        let aug = Augment {
            pad: 2,
            flip: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (x, _) = data.batch(&[0; 2500], Some((&aug, &mut rng)));
        let mut seen = [0usize; 25];
        for img in x.chunks(25) {
            let (at, _) = img
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            seen[at] += 1;
        }
        // The pixel lands at (2 + 2 − dy, 2 + 2 − dx) for dy, dx in 0..=4: all 25 places.
        assert!(seen.iter().all(|&c| (60..140).contains(&c)), "{seen:?}");
    }

    #[test]
    fn batches_are_seeded_and_normalized() {
        let data = images(20, 6, 5);
        let aug = Augment { pad: 2, flip: true };
        let idx: Vec<usize> = (0..20).rev().collect();
        let run = |seed| data.batch(&idx, Some((&aug, &mut ChaCha8Rng::seed_from_u64(seed))));
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a.0, run(8).0);
        assert_eq!(a.0.len(), 20 * 30);
        assert_eq!(a.1, idx.iter().map(|k| k % 10).collect::<Vec<_>>());
        // The rng advances by the draws: the next batch differs from the first.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let first = data.batch(&idx, Some((&aug, &mut rng)));
        let second = data.batch(&idx, Some((&aug, &mut rng)));
        assert_eq!(first, a);
        assert_ne!(first.0, second.0);
        // Independent of the number of threads.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| run(7)), a);
        for img in a.0.chunks(30) {
            let mean = img.iter().map(|&v| v as f64).sum::<f64>() / 30.0;
            let var = img.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 30.0;
            assert!(mean.abs() < 1e-6, "mean {mean}");
            // var / (var + ε): just under 1 for images whose own variance is well above ε.
            assert!(var <= 1.0 && var > 0.99, "variance {var}");
        }
    }

    #[test]
    fn normalization_matches_the_formula_and_spares_constant_images() {
        let raw = [0.0f32, 255.0, 51.0, 102.0];
        let v: Vec<f64> = raw.iter().map(|&r| r as f64 / 255.0).collect();
        let mean = v.iter().sum::<f64>() / 4.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        let want: Vec<f32> = v
            .iter()
            .map(|x| ((x - mean) / (var + 1e-5).sqrt()) as f32)
            .collect();
        let got = normalized(&raw);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        for c in [0u8, 37, 255] {
            let data = Images {
                height: 2,
                width: 3,
                pixels: vec![c; 6],
                labels: vec![1],
            };
            let (x, _) = data.batch(&[0], None);
            assert_eq!(x, vec![0.0; 6], "constant {c}");
        }
    }

    #[test]
    #[should_panic(expected = "index 5 out of range")]
    fn batch_index_out_of_range_panics() {
        images(5, 2, 2).batch(&[0, 5], None);
    }

    /// The real Fashion-MNIST, when `scripts/fetch-fashion-mnist.sh` has fetched it to
    /// `data/fashion-mnist`; a note and nothing else when it has not.
    #[test]
    fn real_fashion_mnist_when_fetched() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
        if !dir.exists() {
            eprintln!(
                "note: {} absent; skipping the real-data check (fetch it with \
                 scripts/fetch-fashion-mnist.sh)",
                dir.display()
            );
            return;
        }
        let (train, test) = load_dir(&dir, FASHION_CLASSES.len()).unwrap();
        assert_eq!((train.len(), test.len()), (60000, 10000));
        for s in [&train, &test] {
            assert_eq!((s.height, s.width), (28, 28));
            assert_eq!(s.pixels.len(), s.len() * 784);
        }
        let mut counts = [0usize; 10];
        for &l in &train.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [6000; 10]);
        let mut counts = [0usize; 10];
        for &l in &test.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [1000; 10]);
        // The first training labels of upstream's file: ankle boot, T-shirt, T-shirt, dress.
        assert_eq!(train.labels[..4], [9, 0, 0, 3]);
        // Not all black or all white.
        let mean = train.pixels.iter().map(|&p| p as f64).sum::<f64>() / train.pixels.len() as f64;
        assert!((50.0..100.0).contains(&mean), "mean pixel {mean}");
    }
}
