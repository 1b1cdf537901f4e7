//! Data that a task fetches on first use with a script of the repository (`scripts/`).

use crate::{Error, Result};
use std::path::Path;

/// A data set fetched by a script of the repository's `scripts/` directory.
#[derive(Debug, Clone, Copy)]
pub struct Fetchable {
    /// The default location, relative to the working directory (`data/shakespeare.txt`).
    pub default: &'static str,
    /// The script under `scripts/` that creates it, given the location as its argument.
    pub script: &'static str,
    /// What to pass instead when the data is missing (`an existing UTF-8 text file`).
    pub instead: &'static str,
}

impl Fetchable {
    /// The script's path in the repository.
    fn script_path(&self) -> std::path::PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        root.join("scripts").join(self.script)
    }

    /// The command that creates `path`.
    pub fn command(&self, path: &Path) -> String {
        format!("bash {} {}", self.script_path().display(), path.display())
    }

    /// Make sure `path` exists: when it is the default location and `fetch` is allowed, run
    /// the script; otherwise stop with [`Error::DataMissing`] and the command to run.
    pub fn ensure(&self, path: &Path, fetch: bool, verbose: bool) -> Result<()> {
        if path.exists() {
            return Ok(());
        }
        let script = self.script_path();
        let command = self.command(path);
        let is_default = path == Path::new(self.default) || path.ends_with(self.default);
        if !(fetch && is_default && script.exists()) {
            let hint = if is_default {
                format!("fetch it with:\n    {command}")
            } else {
                format!(
                    "pass {} with --data, or fetch the default with: {}",
                    self.instead,
                    self.command(Path::new(self.default))
                )
            };
            return Err(Error::DataMissing {
                path: path.to_path_buf(),
                hint,
            });
        }
        if verbose {
            eprintln!(
                "{} is missing; fetching it with {}",
                path.display(),
                script.display()
            );
        }
        // The script reports its progress on standard output: shown only when verbose.
        let stdout = if verbose {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        };
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(path)
            .stdout(stdout)
            .status()
            .map_err(|source| Error::Io {
                path: script.clone(),
                source,
            })?;
        if !status.success() || !path.exists() {
            return Err(Error::DataMissing {
                path: path.to_path_buf(),
                hint: format!("the fetch script failed ({status}); run it by hand: {command}"),
            });
        }
        Ok(())
    }
}
