//! Metrics as JSON Lines: one JSON object per logged step, flushed as it is written, so a
//! crashed run keeps everything logged so far.

use crate::{Error, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Appends records to a `.jsonl` file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Start a new log at `path`, replacing any file there.
    pub fn create(path: &Path) -> Result<MetricsLog> {
        let file = File::create(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Continue the log at `path` after a resume: records whose `"step"` is above
    /// `last_step` (written after the checkpoint being resumed) are dropped, so the resumed
    /// run rewrites them exactly once. Kept records are copied byte for byte.
    pub fn resume(path: &Path, last_step: u64) -> Result<MetricsLog> {
        let kept: Vec<String> = read_lines(path)?
            .into_iter()
            .filter(|(_, r)| r["step"].as_u64().is_some_and(|s| s <= last_step))
            .map(|(line, _)| line)
            .collect();
        let mut log = MetricsLog::create(path)?;
        for line in &kept {
            writeln!(log.file, "{line}").map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(log)
    }

    /// Write one record as a line and flush it.
    pub fn append(&mut self, record: &Value) -> Result<()> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        writeln!(self.file, "{record}").map_err(io)?;
        self.file.flush().map_err(io)
    }
}

/// All records of a `.jsonl` file (a missing file has none). A line that is not valid JSON
/// — typically the last one of a run killed mid-write — ends the list.
pub fn read_records(path: &Path) -> Result<Vec<Value>> {
    Ok(read_lines(path)?.into_iter().map(|(_, v)| v).collect())
}

/// The lines of a `.jsonl` file with their parsed values, up to the first invalid line.
fn read_lines(path: &Path) -> Result<Vec<(String, Value)>> {
    let file = match OpenOptions::new().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match serde_json::from_str(&line) {
            Ok(v) => out.push((line, v)),
            Err(_) => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_drops_records_after_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("lm-metrics-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        for s in [10, 20, 30] {
            log.append(&json!({"step": s, "loss": 1.0})).unwrap();
        }
        drop(log);
        let mut log = MetricsLog::resume(&path, 20).unwrap();
        log.append(&json!({"step": 30, "loss": 2.0})).unwrap();
        let recs = read_records(&path).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2]["loss"], 2.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
