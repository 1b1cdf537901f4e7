//! Checkpoints: named tensors, a configuration string and a step counter in one
//! [safetensors](https://huggingface.co/docs/safetensors) file.
//!
//! Saving is atomic: the file is written under a temporary name in the same directory,
//! flushed to disk (`fsync`), then renamed over the destination, so a crash leaves either the
//! old or the new checkpoint, never a torn one. Loading verifies a checksum of all tensor
//! bytes kept in the file's metadata, so truncated or corrupted files are refused with a
//! [`CheckpointError`] and nothing is modified.

use engine::{DType, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing, syncing or renaming failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid checkpoint (truncated, corrupted, or written by something
    /// else); the message says what is wrong.
    #[error("checkpoint {path} is corrupt or truncated: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// A tensor could not be converted.
    #[error("checkpoint: {0}")]
    Engine(#[from] engine::Error),
}

/// Everything a training run needs to continue: named tensors (parameters, buffers,
/// optimizer state), a free-form configuration string (JSON by convention) and the number
/// of completed steps.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    /// Completed training steps.
    pub step: u64,
    /// The run's configuration and any other state, JSON by convention.
    pub config: String,
    /// Named tensors, `f32` or `f64`, any shape.
    pub tensors: BTreeMap<String, Tensor>,
}

const KEY_STEP: &str = "step";
const KEY_CONFIG: &str = "config";
const KEY_CHECKSUM: &str = "checksum";
const KEY_FORMAT: &str = "format";
const FORMAT: &str = "sigma-reparam-checkpoint-1";

/// 64-bit FNV-1a over the tensor names and bytes, in name order.
fn checksum<'a>(items: impl Iterator<Item = (&'a str, &'a [u8])>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, data) in items {
        eat(name.as_bytes());
        eat(&(data.len() as u64).to_le_bytes());
        eat(data);
    }
    h
}

fn tensor_bytes(t: &Tensor) -> std::result::Result<(Dtype, Vec<u8>), engine::Error> {
    Ok(match t.dtype() {
        DType::F32 => (
            Dtype::F32,
            t.to_vec::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            Dtype::F64,
            t.to_vec::<f64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    })
}

impl Checkpoint {
    /// Write the checkpoint to `path` atomically (temporary file `path.tmp`, `fsync`,
    /// rename, `fsync` of the directory). Errors with [`CheckpointError::Io`] when the
    /// directory is not writable; an existing file at `path` is then left as it was.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut encoded = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let (dtype, bytes) = tensor_bytes(t)?;
            encoded.push((name.as_str(), dtype, t.shape().to_vec(), bytes));
        }
        let sum = checksum(encoded.iter().map(|(n, _, _, b)| (*n, b.as_slice())));
        let mut views = Vec::with_capacity(encoded.len());
        for (name, dtype, shape, bytes) in &encoded {
            let view = TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| {
                CheckpointError::Corrupt {
                    path: path.to_path_buf(),
                    msg: format!("cannot encode {name}: {e}"),
                }
            })?;
            views.push((name.to_string(), view));
        }
        let metadata: HashMap<String, String> = [
            (KEY_FORMAT, FORMAT.to_string()),
            (KEY_STEP, self.step.to_string()),
            (KEY_CONFIG, self.config.clone()),
            (KEY_CHECKSUM, format!("{sum:016x}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let data = safetensors::serialize(views, &Some(metadata)).map_err(|e| {
            CheckpointError::Corrupt {
                path: path.to_path_buf(),
                msg: format!("cannot serialize: {e}"),
            }
        })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// Read a checkpoint written by [`Checkpoint::save`]. Errors with
    /// [`CheckpointError::Io`] when the file cannot be read and
    /// [`CheckpointError::Corrupt`] when it is truncated, corrupted or not a checkpoint.
    /// Never modifies the file.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let data = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |msg: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            msg,
        };
        let (_, meta) = SafeTensors::read_metadata(&data).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&data).map_err(|e| corrupt(e.to_string()))?;
        let meta = meta
            .metadata()
            .clone()
            .ok_or_else(|| corrupt("no metadata".into()))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| corrupt(format!("metadata has no {k:?}")))
        };
        if get(KEY_FORMAT)? != FORMAT {
            return Err(corrupt(format!("unknown format {:?}", get(KEY_FORMAT)?)));
        }
        let step = get(KEY_STEP)?
            .parse::<u64>()
            .map_err(|e| corrupt(format!("bad step: {e}")))?;
        let config = get(KEY_CONFIG)?.clone();
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let mut views = Vec::with_capacity(names.len());
        for name in &names {
            views.push(st.tensor(name).map_err(|e| corrupt(e.to_string()))?);
        }
        let sum = checksum(
            names
                .iter()
                .zip(&views)
                .map(|(n, v)| (n.as_str(), v.data())),
        );
        if format!("{sum:016x}") != *get(KEY_CHECKSUM)? {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in names.into_iter().zip(views) {
            let bytes = view.data();
            let t = match view.dtype() {
                Dtype::F32 => Tensor::from_vec(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect::<Vec<f32>>(),
                    view.shape(),
                )?,
                Dtype::F64 => Tensor::from_vec(
                    bytes
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect::<Vec<f64>>(),
                    view.shape(),
                )?,
                other => return Err(corrupt(format!("{name} has unsupported dtype {other:?}"))),
            };
            tensors.insert(name, t);
        }
        Ok(Checkpoint {
            step,
            config,
            tensors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "model.w".to_string(),
            Tensor::from_vec(vec![1.5f32, -2.0, 3.25, 0.0, 7.0, 1e-30], &[2, 3]).unwrap(),
        );
        tensors.insert(
            "optim.0.exp_avg".to_string(),
            Tensor::from_vec(vec![0.1f64, f64::MIN_POSITIVE], &[2]).unwrap(),
        );
        tensors.insert("scalar".to_string(), Tensor::scalar(4.0, DType::F32));
        Checkpoint {
            step: 42,
            config: r#"{"lr":0.001}"#.to_string(),
            tensors,
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let c = sample();
        c.save(&path).unwrap();
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.step, 42);
        assert_eq!(back.config, c.config);
        assert_eq!(back.tensors.len(), 3);
        for (k, t) in &c.tensors {
            let b = &back.tensors[k];
            assert_eq!(b.shape(), t.shape());
            assert_eq!(b.dtype(), t.dtype());
            assert_eq!(b.to_vec_f64().unwrap(), t.to_vec_f64().unwrap());
        }
        // Overwriting is atomic and leaves no temporary file behind.
        c.save(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn truncated_or_corrupted_files_are_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        sample().save(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            good[..good.len() - 3].to_vec(),
            good[..5].to_vec(),
            Vec::new(),
            b"not a checkpoint at all".to_vec(),
        ];
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x40;
        cases.push(flipped);
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = Checkpoint::load(&path).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. }),
                "unexpected {err}"
            );
            assert!(err.to_string().contains("corrupt or truncated"));
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
        let missing = Checkpoint::load(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, CheckpointError::Io { .. }));
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("no-such-dir").join("ckpt.safetensors");
        assert!(matches!(
            sample().save(&bad),
            Err(CheckpointError::Io { .. })
        ));
    }
}
