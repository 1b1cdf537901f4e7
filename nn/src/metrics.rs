//! Evaluation metrics.

use crate::{Error, Result};
use engine::Tensor;

/// Top-1 accuracy: the fraction (in `[0, 1]`) of the rows of `logits` `[n, classes]` whose
/// [`Tensor::argmax`] equals `targets[row]` (ties go to the first class; a row holding NaN
/// predicts its first NaN, as PyTorch's `argmax`). Works on logits or probabilities alike.
///
/// Errors with [`Error::Config`] naming the shapes when `logits` is not 2-D, when
/// `targets.len()` is not `n`, when `n` or `classes` is 0, or when a target is not below
/// `classes`.
pub fn accuracy(logits: &Tensor, targets: &[usize]) -> Result<f64> {
    let &[n, classes] = logits.shape() else {
        return Err(Error::Config(format!(
            "accuracy: logits must be [n, classes], got shape {:?}",
            logits.shape()
        )));
    };
    if targets.len() != n || n == 0 || classes == 0 {
        return Err(Error::Config(format!(
            "accuracy: {} targets for logits of shape {:?} (needs one per row, at least one \
             row and one class)",
            targets.len(),
            logits.shape()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t >= classes) {
        return Err(Error::Config(format!(
            "accuracy: target {t} out of range for {classes} classes"
        )));
    }
    let hits = logits
        .argmax(1)?
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count();
    Ok(hits as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::DType;

    #[test]
    fn accuracy_counts_argmax_hits() {
        // Predictions: 1, 0 (tie → first), 2, 2 (NaN → first NaN).
        let logits = Tensor::from_f64s(
            &[
                0.1,
                0.7,
                0.2, //
                0.5,
                0.5,
                0.1, //
                -1.0,
                -2.0,
                3.0, //
                1.0,
                2.0,
                f64::NAN,
            ],
            &[4, 3],
            DType::F32,
        )
        .unwrap();
        assert_eq!(accuracy(&logits, &[1, 0, 2, 2]).unwrap(), 1.0);
        assert_eq!(accuracy(&logits, &[1, 1, 2, 1]).unwrap(), 0.5);
        assert_eq!(accuracy(&logits, &[0, 1, 1, 0]).unwrap(), 0.0);
        // A column-major view of the same logits is read in its logical order.
        let view = logits.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(!view.is_contiguous());
        assert_eq!(accuracy(&view, &[1, 1, 2, 1]).unwrap(), 0.5);
        assert_eq!(
            accuracy(&logits.narrow(0, 0, 3).unwrap(), &[1, 2, 2]).unwrap(),
            2.0 / 3.0
        );
    }

    #[test]
    fn accuracy_rejects_bad_shapes_and_targets() {
        let logits = Tensor::zeros(&[2, 3], DType::F64);
        let err = |l: &Tensor, t: &[usize]| accuracy(l, t).unwrap_err().to_string();
        assert!(err(&logits, &[0]).contains("1 targets for logits of shape [2, 3]"));
        assert!(err(&logits, &[0, 3]).contains("target 3 out of range for 3 classes"));
        let flat = Tensor::zeros(&[6], DType::F64);
        assert!(err(&flat, &[0]).contains("got shape [6]"));
        let empty = Tensor::zeros(&[0, 3], DType::F64);
        assert!(err(&empty, &[]).contains("at least one row"));
    }
}
