//! What a checkpoint holds beside the tensors, reading it back, and loading a saved run's
//! model for inference.

use super::{seeded, Inspect, Task, TrainConfig, CHECKPOINT_FILE};
use crate::{Error, Result};
use engine::Tensor;
use nn::{Checkpoint, ModuleExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// State saved beside the tensors of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedState {
    pub(super) train: TrainConfig,
    pub(super) task: Value,
    pub(super) state: Value,
    pub(super) batch_rng_word_pos: String,
    pub(super) dropout_rng_word_pos: String,
}

/// A checkpoint's settings and tensors, read and checked.
pub(super) struct Saved<C> {
    pub(super) step: usize,
    pub(super) train: TrainConfig,
    pub(super) task: C,
    pub(super) state: SavedState,
    pub(super) ckpt: Checkpoint,
}

/// Read the checkpoint at `path` of a `T` run, its settings validated as a fresh run's
/// (the tensors are checksummed, the JSON settings are not). Errors: a corrupt checkpoint,
/// settings another program wrote, or settings that would be refused on the command line.
pub(super) fn read_checkpoint<T: Task>(path: &Path) -> Result<Saved<T::Config>> {
    let ckpt = Checkpoint::load(path).map_err(nn::Error::from)?;
    let bad = |e: serde_json::Error| {
        Error::Data(format!(
            "checkpoint {} is not a run of {}, or its settings are damaged: {e}",
            path.display(),
            T::NAME
        ))
    };
    let state: SavedState = serde_json::from_str(&ckpt.config).map_err(bad)?;
    let task = serde_json::from_value(state.task.clone()).map_err(bad)?;
    state.train.validate()?;
    T::validate(&task, &state.train)?;
    Ok(Saved {
        step: ckpt.step as usize,
        train: state.train.clone(),
        task,
        state,
        ckpt,
    })
}

/// The tensors of `ckpt` under `prefix` (`model.`, `optim.`), with the prefix removed.
pub(super) fn tensors_under(ckpt: &Checkpoint, prefix: &str) -> BTreeMap<String, Tensor> {
    ckpt.tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
        .collect()
}

/// A saved run's model, ready for inference (eval mode, entropy recording off).
pub struct LoadedRun<T: Task> {
    /// The run's shared settings.
    pub train: TrainConfig,
    /// The run's task settings.
    pub task: T::Config,
    /// The task state saved beside the weights.
    pub state: Value,
    /// The step the checkpoint was written at.
    pub step: usize,
    /// The model with the checkpoint's weights and buffers.
    pub model: T::Model,
}

/// Load the model of the run saved in `dir` (its `checkpoint.safetensors`) for inference.
/// Errors: no checkpoint there (naming the directory), a corrupt checkpoint, or one written
/// by another program.
pub fn load_run<T: Task>(dir: &Path) -> Result<LoadedRun<T>> {
    let path = dir.join(CHECKPOINT_FILE);
    if !path.is_file() {
        return Err(Error::Config(format!(
            "{}: there is no {CHECKPOINT_FILE} here; pass the --out directory of a {} run",
            dir.display(),
            T::NAME
        )));
    }
    let saved = read_checkpoint::<T>(&path)?;
    let model = T::build_model(
        &saved.task,
        &saved.train,
        &saved.state.state,
        &mut seeded(saved.train.seed, 0),
    )?;
    model.load_state_dict(&tensors_under(&saved.ckpt, "model."))?;
    model.eval();
    model.set_record_entropy(false);
    Ok(LoadedRun {
        train: saved.train,
        task: saved.task,
        state: saved.state.state,
        step: saved.step,
        model,
    })
}
