//! Character-level text data: loading a UTF-8 corpus, the vocabulary, a deterministic
//! train/validation split and batches of `[batch, seq_len]` inputs with next-character
//! targets.

use crate::{Error, Result};
use rand::Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// Read `path` as UTF-8 text.
///
/// Errors: [`Error::DataMissing`] when the file does not exist (the message carries
/// `fetch_hint`, the command that creates it), [`Error::Io`] when it cannot be read,
/// [`Error::NotUtf8`] with the byte offset of the first invalid sequence, and
/// [`Error::Data`] when it is empty or a directory.
pub fn load_text(path: &Path, fetch_hint: &str) -> Result<String> {
    if path.is_dir() {
        return Err(Error::Data(format!(
            "{} is a directory, not a text file; pass a UTF-8 text file with --data (for example {})",
            path.display(),
            path.join("input.txt").display()
        )));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::DataMissing {
                path: path.to_path_buf(),
                hint: fetch_hint.to_string(),
            })
        }
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.is_empty() {
        return Err(Error::Data(format!("{} is empty", path.display())));
    }
    Ok(text)
}

/// The characters of a training text, sorted by code point; ids are positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    ids: BTreeMap<char, usize>,
}

impl Vocab {
    /// The distinct characters of `text`, sorted.
    pub fn from_text(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab::from_chars(chars)
    }

    /// A vocabulary from an explicit list (as saved in a checkpoint); duplicates are dropped.
    pub fn from_chars(mut chars: Vec<char>) -> Vocab {
        chars.dedup();
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        Vocab { chars, ids }
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Ids of the characters of `text` that are in the vocabulary, and how many were not.
    pub fn encode(&self, text: &str) -> (Vec<usize>, usize) {
        let mut unknown = 0;
        let ids = text
            .chars()
            .filter_map(|c| {
                let id = self.ids.get(&c).copied();
                unknown += id.is_none() as usize;
                id
            })
            .collect();
        (ids, unknown)
    }

    /// The text of `ids`; ids out of range become U+FFFD.
    pub fn decode(&self, ids: &[usize]) -> String {
        ids.iter()
            .map(|&i| self.chars.get(i).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }
}

/// A corpus split into training and validation ids.
#[derive(Debug, Clone)]
pub struct TextData {
    /// Vocabulary of the training part.
    pub vocab: Vocab,
    /// Training ids (the first `1 − val_fraction` of the characters).
    pub train: Vec<usize>,
    /// Validation ids (the rest, minus characters absent from the training part).
    pub val: Vec<usize>,
    /// Validation characters dropped because the training part never shows them.
    pub val_unknown: usize,
}

impl TextData {
    /// Split `text` by characters: the first `1 − val_fraction` trains, the rest validates
    /// (deterministic, no shuffling, so validation text is unseen prose). The vocabulary
    /// comes from the training part only. Errors when either part is shorter than
    /// `min_len` characters (one batch window) or `val_fraction` is outside (0, 1).
    pub fn split(text: &str, val_fraction: f64, min_len: usize) -> Result<TextData> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(Error::Data(format!(
                "validation fraction must be in (0, 1), got {val_fraction}"
            )));
        }
        let n = text.chars().count();
        let n_train = ((n as f64) * (1.0 - val_fraction)).round() as usize;
        let cut = text
            .char_indices()
            .nth(n_train)
            .map_or(text.len(), |(i, _)| i);
        let (train_text, val_text) = text.split_at(cut);
        let vocab = Vocab::from_text(train_text);
        let (train, _) = vocab.encode(train_text);
        let (val, val_unknown) = vocab.encode(val_text);
        for (name, part) in [("training", &train), ("validation", &val)] {
            if part.len() < min_len {
                return Err(Error::Data(format!(
                    "the {name} part has {} characters, fewer than the {min_len} one sequence needs; \
                     use a longer text or a shorter --seq-len",
                    part.len()
                )));
            }
        }
        Ok(TextData {
            vocab,
            train,
            val,
            val_unknown,
        })
    }
}

/// One batch: `inputs[b*seq_len + t]` and the next character `targets[b*seq_len + t]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Input ids, row-major `[batch, seq_len]`.
    pub inputs: Vec<usize>,
    /// Target ids (inputs shifted by one), row-major `[batch, seq_len]`.
    pub targets: Vec<usize>,
}

/// A batch of `batch` windows of `seq_len + 1` ids starting at `starts`.
fn batch_at(ids: &[usize], starts: &[usize], seq_len: usize) -> Batch {
    let mut inputs = Vec::with_capacity(starts.len() * seq_len);
    let mut targets = Vec::with_capacity(starts.len() * seq_len);
    for &s in starts {
        inputs.extend_from_slice(&ids[s..s + seq_len]);
        targets.extend_from_slice(&ids[s + 1..s + seq_len + 1]);
    }
    Batch { inputs, targets }
}

/// A batch of windows at uniformly random offsets of `ids` (which must hold more than
/// `seq_len` ids, as [`TextData::split`] guarantees).
pub fn random_batch(ids: &[usize], batch: usize, seq_len: usize, rng: &mut impl Rng) -> Batch {
    let starts: Vec<usize> = (0..batch)
        .map(|_| rng.gen_range(0..ids.len() - seq_len))
        .collect();
    batch_at(ids, &starts, seq_len)
}

/// `n_batches` batches of windows spread evenly over `ids`: the same every call, so
/// validation losses are comparable across steps and runs.
pub fn eval_batches(ids: &[usize], n_batches: usize, batch: usize, seq_len: usize) -> Vec<Batch> {
    let windows = n_batches * batch;
    let span = ids.len() - seq_len - 1;
    let starts: Vec<usize> = (0..windows).map(|w| w * span / windows.max(1)).collect();
    starts
        .chunks(batch)
        .map(|s| batch_at(ids, s, seq_len))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn vocab_round_trip_and_unknowns() {
        let v = Vocab::from_text("hello, world");
        assert_eq!(v.len(), 9);
        let (ids, unk) = v.encode("low!");
        assert_eq!(unk, 1);
        assert_eq!(v.decode(&ids), "low");
    }

    #[test]
    fn split_is_deterministic_and_batches_shift_by_one() {
        let text = "abcdefghij".repeat(20);
        let d = TextData::split(&text, 0.1, 9).unwrap();
        assert_eq!(d.train.len(), 180);
        assert_eq!(d.val.len(), 20);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let b = random_batch(&d.train, 3, 8, &mut rng);
        assert_eq!(b.inputs.len(), 24);
        for r in 0..3 {
            assert_eq!(b.inputs[r * 8 + 1..r * 8 + 8], b.targets[r * 8..r * 8 + 7]);
        }
        let e = eval_batches(&d.val, 2, 2, 8);
        assert_eq!(e, eval_batches(&d.val, 2, 2, 8));
        assert_eq!(e.len(), 2);
        assert!(TextData::split("abc", 0.5, 8).is_err());
    }

    #[test]
    fn missing_and_non_utf8_files_give_clear_errors() {
        let dir = std::env::temp_dir().join(format!("lm-text-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = load_text(&dir.join("nope.txt"), "run X").unwrap_err();
        assert!(missing.to_string().contains("run X"), "{missing}");
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"ok\xff\xfe").unwrap();
        let e = load_text(&bad, "").unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8") && e.to_string().contains("byte 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
