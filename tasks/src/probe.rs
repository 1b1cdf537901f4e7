//! The linear probe of self-supervised learning (SimCLR §4, "linear evaluation protocol"):
//! a linear classifier trained on frozen features, and its accuracy.

use crate::{Error, Result};
use engine::{DType, Reduction, Tensor};
use nn::{AdamW, AdamWConfig, CosineSchedule, Optimizer, ParamGroup};

/// Steps between the validation checks of [`LinearProbe::fit`].
pub const SELECT_EVERY: usize = 50;

/// How the probe is trained.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    /// Full-batch AdamW steps (the probe kept is the best on validation among every
    /// [`SELECT_EVERY`]-th step and the last).
    pub steps: usize,
    /// Peak learning rate, decayed to 0 by a cosine.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
}

/// Feature vectors `[n, dim]` row-major with one label each.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Length of each vector.
    pub dim: usize,
    /// `n · dim` values.
    pub values: Vec<f32>,
    /// One class per vector.
    pub labels: Vec<u8>,
}

impl Features {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A linear classifier `x·W + b` on standardized features, trained by [`LinearProbe::fit`].
#[derive(Debug)]
pub struct LinearProbe {
    w: Tensor,
    b: Tensor,
    /// Per-dimension mean and standard deviation of the training features.
    moments: (Vec<f64>, Vec<f64>),
    n_classes: usize,
    /// The step (1-based) whose weights were kept: the best on validation.
    pub step: usize,
    /// Accuracy of the kept weights on the validation features, in [0, 1].
    pub val_accuracy: f64,
    /// Accuracy of the kept weights on the training features, in [0, 1].
    pub train_accuracy: f64,
    /// Mean cross-entropy of the kept weights on the training features (nats).
    pub train_loss: f64,
}

/// Per-dimension mean and standard deviation of `f` (f64 sums, in order); a constant
/// dimension gets standard deviation 1 so that it becomes 0.
fn moments(f: &Features) -> (Vec<f64>, Vec<f64>) {
    let n = f.len().max(1) as f64;
    let mut mean = vec![0.0; f.dim];
    let mut sq = vec![0.0; f.dim];
    for row in f.values.chunks_exact(f.dim) {
        for ((m, s), &x) in mean.iter_mut().zip(&mut sq).zip(row) {
            *m += f64::from(x);
            *s += f64::from(x) * f64::from(x);
        }
    }
    let std = mean
        .iter_mut()
        .zip(&sq)
        .map(|(m, &s)| {
            *m /= n;
            let sd = (s / n - *m * *m).max(0.0).sqrt();
            if sd > 1e-12 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean, std)
}

/// `f` standardized with `(mean, std)` as a tensor `[n, dim]`.
fn standardized(f: &Features, (mean, std): &(Vec<f64>, Vec<f64>)) -> Result<Tensor> {
    let values: Vec<f32> = f
        .values
        .chunks_exact(f.dim)
        .flat_map(|row| {
            row.iter()
                .zip(mean.iter().zip(std))
                .map(|(&x, (m, s))| ((f64::from(x) - m) / s) as f32)
        })
        .collect();
    Ok(Tensor::from_vec(values, &[f.len(), f.dim])?)
}

fn labels(f: &Features) -> Vec<usize> {
    f.labels.iter().map(|&l| usize::from(l)).collect()
}

/// Errors with [`Error::Config`] unless `f` is a nonempty, unragged set of `dim`-vectors
/// whose labels are below `n_classes`.
fn check(name: &str, f: &Features, dim: usize, n_classes: usize) -> Result<()> {
    if f.is_empty() || f.dim == 0 || f.values.len() != f.len() * f.dim || f.dim != dim {
        return Err(Error::Config(format!(
            "linear probe: {name} features must be a nonempty [n, {dim}] set with one label \
             per vector (got dim {}, {} values, {} labels)",
            f.dim,
            f.values.len(),
            f.len()
        )));
    }
    match f.labels.iter().find(|&&l| usize::from(l) >= n_classes) {
        Some(&l) => Err(Error::Config(format!(
            "linear probe: {name} label {l} is not below the {n_classes} classes"
        ))),
        None => Ok(()),
    }
}

impl LinearProbe {
    /// Train a linear classifier on `train` (each dimension standardized with the training
    /// features' mean and standard deviation) by full-batch AdamW on the mean
    /// cross-entropy, `W` and `b` starting at zero, the learning rate decayed by a cosine
    /// from `cfg.lr` to 0 over `cfg.steps`; every [`SELECT_EVERY`] steps and at the last,
    /// score it on `val` and keep the best weights (early stopping on held-out data, the
    /// first of equal scores: the probe's only regularization besides `weight_decay`, so
    /// that every feature set gets the same, fair selection). Deterministic: no random
    /// draw, and every op is bit-reproducible at any thread count.
    ///
    /// Errors with [`Error::Config`] when a set is empty or ragged, the two differ in
    /// dimension, a label is `≥ n_classes`, or the settings are not finite and positive
    /// (steps, lr) or ≥ 0 (weight decay).
    pub fn fit(
        train: &Features,
        val: &Features,
        n_classes: usize,
        cfg: &ProbeConfig,
    ) -> Result<LinearProbe> {
        check("training", train, train.dim, n_classes)?;
        check("validation", val, train.dim, n_classes)?;
        let ok = cfg.steps > 0
            && cfg.lr.is_finite()
            && cfg.lr > 0.0
            && cfg.weight_decay.is_finite()
            && cfg.weight_decay >= 0.0;
        if !ok {
            return Err(Error::Config(format!(
                "linear probe: --probe-steps and --probe-lr must be positive and \
                 --probe-weight-decay finite and ≥ 0, got {cfg:?}"
            )));
        }
        let moments = moments(train);
        let (x, y) = (standardized(train, &moments)?, labels(train));
        let w = Tensor::zeros(&[train.dim, n_classes], DType::F32).requires_grad_(true)?;
        let b = Tensor::zeros(&[n_classes], DType::F32).requires_grad_(true)?;
        let mut opt = AdamW::new(
            vec![ParamGroup::new(
                vec![w.clone(), b.clone()],
                cfg.weight_decay,
            )],
            AdamWConfig {
                lr: cfg.lr,
                ..AdamWConfig::default()
            },
        )?;
        let schedule = CosineSchedule {
            base_lr: cfg.lr,
            min_lr: 0.0,
            warmup: 0,
            total: cfg.steps,
        };
        let mut probe = LinearProbe {
            w,
            b,
            moments,
            n_classes,
            step: 0,
            val_accuracy: f64::NEG_INFINITY,
            train_accuracy: 0.0,
            train_loss: 0.0,
        };
        let mut best: Option<(Vec<f32>, Vec<f32>)> = None;
        for step in 1..=cfg.steps {
            opt.set_lr(schedule.lr(step - 1));
            let loss = probe.logits(&x)?.cross_entropy(&y, None, Reduction::Mean)?;
            loss.backward()?;
            opt.step()?;
            opt.zero_grad();
            if step.is_multiple_of(SELECT_EVERY) || step == cfg.steps {
                let acc = probe.accuracy(val)?;
                if acc > probe.val_accuracy {
                    (probe.step, probe.val_accuracy) = (step, acc);
                    best = Some((probe.w.to_vec()?, probe.b.to_vec()?));
                }
            }
        }
        if let Some((w, b)) = best {
            probe.w = Tensor::from_vec(w, &[train.dim, n_classes])?;
            probe.b = Tensor::from_vec(b, &[n_classes])?;
        }
        let logits = engine::no_grad(|| probe.logits(&x))?;
        probe.train_accuracy = nn::accuracy(&logits, &y)?;
        probe.train_loss = logits.cross_entropy(&y, None, Reduction::Mean)?.item()?;
        Ok(probe)
    }

    /// `x·W + b` for standardized features `x` `[n, dim]`.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w)?.add(&self.b)?)
    }

    /// The fraction of `f`'s vectors whose predicted class is their label, in [0, 1];
    /// errors as [`LinearProbe::fit`] on a bad set or one of another dimension.
    pub fn accuracy(&self, f: &Features) -> Result<f64> {
        check("evaluated", f, self.moments.0.len(), self.n_classes)?;
        let x = standardized(f, &self.moments)?;
        let logits = engine::no_grad(|| self.logits(&x))?;
        Ok(nn::accuracy(&logits, &labels(f))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Three Gaussian clusters in 5 dimensions (one of them constant): the probe separates
    /// them; shuffled labels it cannot generalize.
    #[test]
    fn probe_separates_clusters_and_checks_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut make = |n: usize| {
            let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
            let values = labels
                .iter()
                .flat_map(|&l| {
                    let mut v: Vec<f32> = (0..4).map(|_| rng.gen_range(-1.0..1.0)).collect();
                    v[usize::from(l)] += 3.0;
                    v.push(7.0);
                    v
                })
                .collect();
            Features {
                dim: 5,
                values,
                labels,
            }
        };
        let (train, val, test) = (make(300), make(60), make(90));
        let cfg = ProbeConfig {
            steps: 200,
            lr: 0.05,
            weight_decay: 0.0,
        };
        let probe = LinearProbe::fit(&train, &val, 3, &cfg).unwrap();
        let acc = probe.accuracy(&test).unwrap();
        assert!(acc > 0.97 && probe.train_accuracy > 0.97, "{acc} {probe:?}");
        assert!(probe.train_loss < 0.2, "{probe:?}");
        // Kept: a step checked on validation, with the best score seen.
        assert!(
            probe.step.is_multiple_of(SELECT_EVERY) && probe.val_accuracy > 0.97,
            "{probe:?}"
        );
        let again = LinearProbe::fit(&train, &val, 3, &cfg).unwrap();
        assert_eq!(
            (again.train_loss, again.accuracy(&test).unwrap()),
            (probe.train_loss, acc)
        );

        let bad = Features {
            dim: 4,
            ..test.clone()
        };
        let e = probe.accuracy(&bad).unwrap_err().to_string();
        assert!(
            e.contains("evaluated features must be a nonempty [n, 5] set"),
            "{e}"
        );
        let e = LinearProbe::fit(&test, &val, 2, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 2 is not below the 2 classes"), "{e}");
        let nan = ProbeConfig {
            lr: f64::NAN,
            ..cfg
        };
        let e = LinearProbe::fit(&train, &val, 3, &nan)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--probe-lr"), "{e}");
    }
}
