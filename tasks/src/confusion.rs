//! Confusion matrices of classifiers: counts of (true class, predicted class) pairs, the
//! accuracy and per-class recall and precision derived from them, and their outputs — a
//! terminal table, JSON, and an SVG heat map.
//!
//! Conventions are scikit-learn's `confusion_matrix`: `counts[t][p]` is the number of
//! examples of true class `t` predicted as class `p`; rows are true classes, columns
//! predicted ones, and the diagonal holds the correct predictions. Ratios with a zero
//! denominator (accuracy of an empty matrix, recall of a class with no examples, precision
//! of a class never predicted) are NaN, never a made-up 0 or 1; JSON writes them as `null`.

use crate::{plot, Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Counts of (true class, predicted class) pairs over `n` classes.
///
/// Serializes as `{"counts": [[u64; n]; n]}`; deserializing checks that `counts` is
/// square, and ignores other fields, so the file [`ConfusionMatrix::save`] writes reads
/// back as the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Counts")]
pub struct ConfusionMatrix {
    /// `counts[t][p]`: examples of true class `t` predicted as `p`; `n × n`.
    counts: Vec<Vec<u64>>,
}

/// The unchecked serialized form of [`ConfusionMatrix`].
#[derive(Deserialize)]
struct Counts {
    counts: Vec<Vec<u64>>,
}

impl TryFrom<Counts> for ConfusionMatrix {
    type Error = Error;
    fn try_from(c: Counts) -> Result<ConfusionMatrix> {
        ConfusionMatrix::from_counts(c.counts)
    }
}

/// A ratio, NaN when the denominator is zero.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        f64::NAN
    } else {
        num as f64 / den as f64
    }
}

/// A ratio as a percentage with one decimal (`"85.0%"`) in at most 5 characters for
/// ratios in [0, 1] (`"100%"`, not `"100.0%"`); `"-"` for NaN.
fn percent(x: f64) -> String {
    let p = format!("{:.1}%", 100.0 * x);
    if x.is_nan() {
        "-".into()
    } else if p == "100.0%" {
        "100%".into()
    } else {
        p
    }
}

/// Longest class name [`ConfusionMatrix::render`] prints; longer ones are cut with `…`.
const MAX_NAME_CHARS: usize = 24;

impl ConfusionMatrix {
    /// An empty (all-zero) `n_classes × n_classes` matrix. With 0 classes every
    /// [`add`](Self::add) errors.
    pub fn new(n_classes: usize) -> ConfusionMatrix {
        ConfusionMatrix {
            counts: vec![vec![0; n_classes]; n_classes],
        }
    }

    /// The matrix with these counts (`counts[t][p]`, rows = true class). Errors with
    /// [`Error::Data`] unless `counts` is square.
    pub fn from_counts(counts: Vec<Vec<u64>>) -> Result<ConfusionMatrix> {
        let n = counts.len();
        if let Some((t, row)) = counts.iter().enumerate().find(|(_, r)| r.len() != n) {
            return Err(Error::Data(format!(
                "confusion matrix row {t} has {} counts, expected {n} (one per class: the \
                 matrix must be square)",
                row.len()
            )));
        }
        Ok(ConfusionMatrix { counts })
    }

    /// Count one example of true class `target` predicted as `predicted`. Errors with
    /// [`Error::Data`] (leaving the matrix unchanged) when either is not below
    /// [`n_classes`](Self::n_classes).
    pub fn add(&mut self, target: usize, predicted: usize) -> Result<()> {
        self.check(target, predicted, None)?;
        self.counts[target][predicted] += 1;
        Ok(())
    }

    /// Count `targets[i]` predicted as `predicted[i]` for every `i`. Errors with
    /// [`Error::Data`] when the slices' lengths differ or a class is out of range; on error
    /// nothing is counted.
    pub fn add_batch(&mut self, targets: &[usize], predicted: &[usize]) -> Result<()> {
        if targets.len() != predicted.len() {
            return Err(Error::Data(format!(
                "{} targets but {} predictions; pass one prediction per target",
                targets.len(),
                predicted.len()
            )));
        }
        for (i, (&t, &p)) in targets.iter().zip(predicted).enumerate() {
            self.check(t, p, Some(i))?;
        }
        for (&t, &p) in targets.iter().zip(predicted) {
            self.counts[t][p] += 1;
        }
        Ok(())
    }

    /// Error unless both classes are in range; `index` is the position in a batch.
    fn check(&self, target: usize, predicted: usize, index: Option<usize>) -> Result<()> {
        let n = self.n_classes();
        for (what, class) in [("target", target), ("predicted", predicted)] {
            if class >= n {
                let at = index.map(|i| format!(" at index {i}")).unwrap_or_default();
                return Err(Error::Data(format!(
                    "{what} class {class}{at} out of range for {n} classes (0..{n})"
                )));
            }
        }
        Ok(())
    }

    /// Number of classes `n` (the matrix is `n × n`).
    pub fn n_classes(&self) -> usize {
        self.counts.len()
    }

    /// Number of examples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Number of correct predictions (the diagonal's sum).
    pub fn correct(&self) -> u64 {
        (0..self.n_classes()).map(|i| self.counts[i][i]).sum()
    }

    /// The counts, `counts()[t][p]` = examples of true class `t` predicted as `p`; `n × n`.
    pub fn counts(&self) -> &[Vec<u64>] {
        &self.counts
    }

    /// Examples of each true class (row sums); length `n`.
    pub fn support(&self) -> Vec<u64> {
        self.counts.iter().map(|r| r.iter().sum()).collect()
    }

    /// Predictions of each class (column sums); length `n`.
    pub fn predicted_totals(&self) -> Vec<u64> {
        (0..self.n_classes())
            .map(|p| self.counts.iter().map(|r| r[p]).sum())
            .collect()
    }

    /// Fraction of examples predicted correctly, in [0, 1]; NaN when nothing was counted.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total())
    }

    /// Recall of each class: `counts[c][c] / (row c's sum)`, the fraction of class `c`'s
    /// examples predicted as `c`; NaN for a class with no examples. Length `n`.
    pub fn per_class_recall(&self) -> Vec<f64> {
        self.support()
            .iter()
            .enumerate()
            .map(|(c, &s)| ratio(self.counts[c][c], s))
            .collect()
    }

    /// Precision of each class: `counts[c][c] / (column c's sum)`, the fraction of
    /// predictions of `c` that were right; NaN for a class never predicted. Length `n`.
    pub fn per_class_precision(&self) -> Vec<f64> {
        self.predicted_totals()
            .iter()
            .enumerate()
            .map(|(c, &s)| ratio(self.counts[c][c], s))
            .collect()
    }

    /// Name of class `c`: `class_names[c]`, or its index when the list is too short.
    fn name(class_names: &[String], c: usize) -> String {
        class_names.get(c).cloned().unwrap_or_else(|| c.to_string())
    }

    /// The matrix and its scores as JSON:
    ///
    /// ```json
    /// {"classes": ["cat", ...], "counts": [[...], ...], "total": 100, "correct": 87,
    ///  "accuracy": 0.87, "support": [...], "recall": [...], "precision": [...]}
    /// ```
    ///
    /// `classes`, `support` (examples per true class), `recall` and `precision` have one
    /// entry per class, in class order; NaN ratios are `null`. A class without a name in
    /// `class_names` is named by its index; extra names are ignored. Deserializing this
    /// value as a [`ConfusionMatrix`] gives the matrix back.
    pub fn to_json(&self, class_names: &[String]) -> Value {
        let names: Vec<String> = (0..self.n_classes())
            .map(|c| Self::name(class_names, c))
            .collect();
        json!({
            "classes": names,
            "counts": self.counts,
            "total": self.total(),
            "correct": self.correct(),
            "accuracy": self.accuracy(),
            "support": self.support(),
            "recall": self.per_class_recall(),
            "precision": self.per_class_precision(),
        })
    }

    /// The matrix as a plain-text table for a terminal: a line with the accuracy, a header
    /// of predicted class indices, one line per true class (`index name`, its counts and
    /// its recall), and a last line with each predicted class's precision. Ratios are
    /// percentages with one decimal, `-` when NaN. Names are cut to 24 characters; a class
    /// without a name in `class_names` is shown by its index alone.
    ///
    /// ```text
    /// accuracy 66.7% (8 of 12 correct); rows: true class, columns: predicted class
    /// true \ predicted       0       1       2   recall
    /// 0 cat                  4       1       0    80.0%
    /// 1 dog                  2       3       1    50.0%
    /// 2 bird                 0       0       1   100.0%
    /// precision          66.7%   75.0%   50.0%
    /// ```
    pub fn render(&self, class_names: &[String]) -> String {
        let n = self.n_classes();
        let index_w = n.saturating_sub(1).to_string().len();
        let labels: Vec<String> = (0..n)
            .map(|c| {
                let name = class_names.get(c).map(|s| {
                    if s.chars().count() > MAX_NAME_CHARS {
                        let cut: String = s.chars().take(MAX_NAME_CHARS - 1).collect();
                        format!("{}…", cut.trim_end())
                    } else {
                        s.clone()
                    }
                });
                match name {
                    Some(name) => format!("{c:>index_w$} {name}"),
                    None => format!("{c:>index_w$}"),
                }
            })
            .collect();
        let corner = "true \\ predicted";
        let label_w = labels
            .iter()
            .map(|l| l.chars().count())
            .chain([corner.len(), "precision".len()])
            .max()
            .unwrap_or(0);
        let max_count = self.counts.iter().flatten().copied().max().unwrap_or(0);
        // Wide enough for the largest count, an index, and a percentage ("99.9%").
        let col_w = max_count.to_string().len().max(index_w).max(5);
        let pad = |s: &str| {
            let fill = label_w.saturating_sub(s.chars().count());
            format!("{s}{}", " ".repeat(fill))
        };

        let mut out = format!(
            "accuracy {} ({} of {} correct); rows: true class, columns: predicted class\n",
            percent(self.accuracy()),
            self.correct(),
            self.total()
        );
        out.push_str(&pad(corner));
        for p in 0..n {
            out.push_str(&format!(" {p:>col_w$}"));
        }
        out.push_str(&format!("  {:>6}\n", "recall"));
        for ((label, row), recall) in labels.iter().zip(&self.counts).zip(self.per_class_recall()) {
            out.push_str(&pad(label));
            for count in row {
                out.push_str(&format!(" {count:>col_w$}"));
            }
            out.push_str(&format!("  {:>6}\n", percent(recall)));
        }
        out.push_str(&pad("precision"));
        for precision in self.per_class_precision() {
            out.push_str(&format!(" {:>col_w$}", percent(precision)));
        }
        out.push('\n');
        out
    }

    /// Error unless `class_names` names every class; `path` is the file being written.
    fn check_names(&self, class_names: &[String], path: &Path) -> Result<()> {
        if class_names.len() != self.n_classes() {
            return Err(Error::Plot {
                path: path.to_path_buf(),
                msg: format!(
                    "{} class names for a {n}-class confusion matrix; pass one name per class",
                    class_names.len(),
                    n = self.n_classes()
                ),
            });
        }
        Ok(())
    }

    /// Draw the matrix as an SVG heat map at `path` ([`plot::heat_map_cells`]): true
    /// classes as rows top to bottom, predicted classes as columns, each cell coloured by
    /// its fraction of its row (so the diagonal shows each class's recall; a class with no
    /// examples is a grey row) and annotated with its count.
    ///
    /// Errors with [`Error::Plot`] naming `path` when `class_names.len()` is not
    /// [`n_classes`](Self::n_classes), the matrix has no classes, or the file cannot be
    /// written.
    pub fn plot(&self, path: &Path, class_names: &[String], title: &str) -> Result<()> {
        self.check_names(class_names, path)?;
        let fractions: Vec<Vec<f64>> = self
            .counts
            .iter()
            .map(|row| {
                let sum: u64 = row.iter().sum();
                row.iter().map(|&c| ratio(c, sum)).collect()
            })
            .collect();
        plot::heat_map_cells(
            path,
            title,
            "predicted class",
            "true class",
            class_names,
            class_names,
            &fractions,
            &|t, p, _| self.counts[t][p].to_string(),
        )
    }

    /// Write `dir/confusion.json` ([`to_json`](Self::to_json)) and `dir/confusion.svg`
    /// ([`plot`](Self::plot)); returns their paths in that order. Each is written under a
    /// temporary name (`confusion.json.tmp`, `confusion.svg.tmp`) and renamed into place, so
    /// a reader never sees a partial file and a failed write leaves any previous file as it
    /// was. `dir` must exist.
    ///
    /// Errors with [`Error::Plot`] (naming `confusion.svg`) when `class_names.len()` is
    /// not [`n_classes`](Self::n_classes) — checked before anything is written — or the
    /// chart cannot be drawn, and with [`Error::Io`] when a file cannot be written.
    pub fn save(
        &self,
        dir: &Path,
        class_names: &[String],
        title: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let json_path = dir.join("confusion.json");
        let svg_path = dir.join("confusion.svg");
        self.check_names(class_names, &svg_path)?;
        let tmp = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };

        let json_tmp = tmp(&json_path);
        let text = format!("{}\n", self.to_json(class_names));
        let written =
            std::fs::write(&json_tmp, text).and_then(|()| std::fs::rename(&json_tmp, &json_path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&json_tmp);
            return Err(io(&json_path)(e));
        }

        let svg_tmp = tmp(&svg_path);
        let drawn = self
            .plot(&svg_tmp, class_names, title)
            .map_err(|e| match e {
                Error::Plot { msg, .. } => Error::Plot {
                    path: svg_path.clone(),
                    msg,
                },
                e => e,
            });
        let drawn =
            drawn.and_then(|()| std::fs::rename(&svg_tmp, &svg_path).map_err(io(&svg_path)));
        if drawn.is_err() {
            let _ = std::fs::remove_file(&svg_tmp);
        }
        drawn?;
        Ok((json_path, svg_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// 3 classes, 12 examples:
    ///
    /// ```text
    ///            pred 0  pred 1  pred 2
    /// true 0        4       1       0     recall 4/5
    /// true 1        2       3       1     recall 3/6
    /// true 2        0       0       1     recall 1/1
    /// precision   4/6     3/4     1/2
    /// ```
    fn three() -> ConfusionMatrix {
        let mut m = ConfusionMatrix::new(3);
        m.add_batch(
            &[0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
            &[0, 0, 0, 0, 1, 0, 0, 1, 1, 1],
        )
        .unwrap();
        m.add(1, 2).unwrap();
        m.add(2, 2).unwrap();
        m
    }

    #[test]
    fn counts_accuracy_recall_precision() {
        let m = three();
        assert_eq!(m.n_classes(), 3);
        assert_eq!(m.counts(), &[vec![4, 1, 0], vec![2, 3, 1], vec![0, 0, 1]]);
        assert_eq!(m.total(), 12);
        assert_eq!(m.correct(), 8);
        assert_eq!(m.support(), vec![5, 6, 1]);
        assert_eq!(m.predicted_totals(), vec![6, 4, 2]);
        assert_eq!(m.accuracy(), 8.0 / 12.0);
        assert_eq!(m.per_class_recall(), vec![0.8, 0.5, 1.0]);
        assert_eq!(m.per_class_precision(), vec![4.0 / 6.0, 0.75, 0.5]);
        assert_eq!(
            ConfusionMatrix::from_counts(m.counts().to_vec()).unwrap(),
            m
        );
    }

    #[test]
    fn empty_classes_give_nan_not_zero() {
        let m = ConfusionMatrix::new(2);
        assert_eq!(m.total(), 0);
        assert!(m.accuracy().is_nan());
        let mut m = m;
        m.add(0, 0).unwrap();
        assert_eq!(m.accuracy(), 1.0);
        let recall = m.per_class_recall();
        assert_eq!(recall[0], 1.0);
        assert!(recall[1].is_nan());
        assert!(m.per_class_precision()[1].is_nan());
        let j = m.to_json(&names(&["a", "b"]));
        assert_eq!(j["recall"], json!([1.0, null]));
        assert_eq!(j["precision"], json!([1.0, null]));
        assert_eq!(
            ConfusionMatrix::new(0).to_json(&[])["accuracy"],
            Value::Null
        );
    }

    #[test]
    fn out_of_range_and_mismatched_lengths_are_errors() {
        let mut m = three();
        let before = m.clone();
        let err = m.add(3, 0).unwrap_err().to_string();
        assert!(
            err.contains("target class 3 out of range for 3 classes"),
            "{err}"
        );
        let err = m.add(0, 7).unwrap_err().to_string();
        assert!(err.contains("predicted class 7"), "{err}");
        let err = m.add_batch(&[0, 1], &[0]).unwrap_err().to_string();
        assert!(err.contains("2 targets but 1 predictions"), "{err}");
        // A bad entry late in a batch: nothing of the batch is counted.
        let err = m.add_batch(&[0, 1, 2], &[0, 1, 3]).unwrap_err().to_string();
        assert!(err.contains("predicted class 3 at index 2"), "{err}");
        assert_eq!(m, before);
        assert!(ConfusionMatrix::new(0).add(0, 0).is_err());
        let err = ConfusionMatrix::from_counts(vec![vec![1, 2], vec![3]]).unwrap_err();
        assert!(
            err.to_string().contains("row 1 has 1 counts, expected 2"),
            "{err}"
        );
    }

    #[test]
    fn json_fields_and_round_trip() {
        let m = three();
        let j = m.to_json(&names(&["cat", "dog", "bird"]));
        assert_eq!(j["classes"], json!(["cat", "dog", "bird"]));
        assert_eq!(j["counts"], json!([[4, 1, 0], [2, 3, 1], [0, 0, 1]]));
        assert_eq!(j["total"], 12);
        assert_eq!(j["correct"], 8);
        assert_eq!(j["accuracy"], 8.0 / 12.0);
        assert_eq!(j["support"], json!([5, 6, 1]));
        assert_eq!(j["recall"], json!([0.8, 0.5, 1.0]));
        assert_eq!(j["precision"], json!([4.0 / 6.0, 0.75, 0.5]));
        // Missing names fall back to the index.
        assert_eq!(
            m.to_json(&names(&["cat"]))["classes"],
            json!(["cat", "1", "2"])
        );
        // The JSON reads back as the matrix; the serde form is checked for squareness.
        let back: ConfusionMatrix = serde_json::from_value(j).unwrap();
        assert_eq!(back, m);
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"counts":[[4,1,0],[2,3,1],[0,0,1]]}"#);
        assert!(serde_json::from_str::<ConfusionMatrix>(r#"{"counts":[[1,2]]}"#).is_err());
    }

    #[test]
    fn render_is_an_aligned_table() {
        let m = three();
        let text = m.render(&names(&["cat", "dog", "bird"]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[0].starts_with("accuracy 66.7% (8 of 12 correct)"),
            "{text}"
        );
        let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            words(lines[1]),
            ["true", "\\", "predicted", "0", "1", "2", "recall"]
        );
        assert_eq!(words(lines[2]), ["0", "cat", "4", "1", "0", "80.0%"]);
        assert_eq!(words(lines[3]), ["1", "dog", "2", "3", "1", "50.0%"]);
        assert_eq!(words(lines[4]), ["2", "bird", "0", "0", "1", "100%"]);
        assert_eq!(words(lines[5]), ["precision", "66.7%", "75.0%", "50.0%"]);
        // Every line but the first is right-aligned to the same columns.
        let widths: Vec<usize> = lines[1..5].iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{text}");
        assert_eq!(lines[5].chars().count() + "  recall".len(), widths[0]);
        // Long names are cut; missing names leave the index.
        let long = "a very long class name that goes on";
        let text = m.render(&names(&[long, "dog"]));
        assert!(text.contains("0 a very long class name…  "), "{text}");
        assert!(text.lines().nth(4).unwrap().starts_with("2  "), "{text}");
        assert!(ConfusionMatrix::new(2)
            .render(&[])
            .starts_with("accuracy - (0 of 0"));
    }

    #[test]
    fn plot_and_save_write_json_and_svg() {
        let dir = std::env::temp_dir().join(format!("confusion-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = ConfusionMatrix::new(4);
        m.add_batch(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 2, 0])
            .unwrap();
        let classes = names(&["T-shirt/top", "Trouser", "Ankle boot", "Empty"]);
        let (json_path, svg_path) = m.save(&dir, &classes, "test confusion").unwrap();
        assert_eq!(json_path, dir.join("confusion.json"));
        assert_eq!(svg_path, dir.join("confusion.svg"));
        let back: ConfusionMatrix =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        assert_eq!(back, m);
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        let texts = crate::plot::svg_texts(&svg);
        let count = |s: &str| texts.iter().filter(|t| *t == s).count();
        for text in ["test confusion", "predicted class", "true class"] {
            assert_eq!(count(text), 1, "{text}: {texts:?}");
        }
        // Each class name labels a row and a column.
        for text in &classes {
            assert_eq!(count(text), 2, "{text}: {texts:?}");
        }
        // Cells show counts (the 4th class has no examples: a grey row of zeros); the colour
        // bar shows row fractions 0..1.
        assert_eq!((count("0"), count("1"), count("2")), (11 + 1, 4 + 1, 1));
        assert_eq!(count("0.5"), 1);
        assert!(svg.contains("#BEBEBE"));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Wrong number of names: refused before anything is written.
        std::fs::remove_file(&json_path).unwrap();
        let err = m.save(&dir, &classes[..3], "t").unwrap_err().to_string();
        assert!(err.contains("3 class names for a 4-class"), "{err}");
        assert!(!json_path.exists());
        let err = m.plot(&dir.join("x.svg"), &classes[..2], "t").unwrap_err();
        assert!(matches!(err, Error::Plot { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
