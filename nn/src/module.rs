//! The module abstraction: named parameters and buffers, train/eval mode, `state_dict`.
//!
//! A module exposes its tensors through [`Module::visit`]; everything else
//! ([`ModuleExt::parameters`], [`ModuleExt::state_dict`], [`ModuleExt::load_state_dict`],
//! [`ModuleExt::train`], ...) is derived from it. Parameters are leaf tensors that require
//! grad and are updated in place by optimizers; buffers are persistent state that is saved
//! but not trained (for example σReparam's power-iteration vectors).

use crate::{Error, Result};
use engine::Tensor;
use std::collections::BTreeMap;

/// Whether a visited tensor is trained or only persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// Trainable: requires grad, updated by optimizers.
    Parameter,
    /// Persistent non-trainable state, saved in `state_dict`.
    Buffer,
}

/// A layer or a model made of layers.
pub trait Module {
    /// Call `f(name, tensor, role)` for every parameter and buffer, names dotted under
    /// `prefix` (PyTorch naming: `blocks.0.attn.qkv.weight`).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorRole));

    /// Switch training (`true`) or evaluation mode; containers forward to their children.
    fn set_training(&self, _training: bool) {}
}

/// `prefix.name`, or `name` when `prefix` is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Conveniences derived from [`Module::visit`], available on every module.
pub trait ModuleExt: Module {
    /// Parameters with their names, in visiting order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |n, t, role| {
            if role == TensorRole::Parameter {
                out.push((n, t.clone()))
            }
        });
        out
    }

    /// Parameters in visiting order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Total number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|t| t.numel()).sum()
    }

    /// A copy of every parameter and buffer by name (values detached from the graph).
    fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let mut err = None;
        self.visit("", &mut |n, t, _| match t.copy() {
            Ok(c) => {
                out.insert(n, c.detach());
            }
            Err(e) => err = Some(e),
        });
        match err {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// Copy values from `state` into this module's parameters and buffers, in place.
    /// Strict: every key must be present with the right shape and no extra key may exist;
    /// on any error nothing is modified.
    fn load_state_dict(&self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut targets = Vec::new();
        self.visit("", &mut |n, t, _| targets.push((n, t.clone())));
        for (name, t) in &targets {
            let src = state
                .get(name)
                .ok_or_else(|| Error::MissingKey(name.clone()))?;
            if src.shape() != t.shape() {
                return Err(Error::StateShape {
                    key: name.clone(),
                    expected: t.shape().to_vec(),
                    found: src.shape().to_vec(),
                });
            }
        }
        let known: std::collections::BTreeSet<&String> = targets.iter().map(|(n, _)| n).collect();
        let extra: Vec<String> = state
            .keys()
            .filter(|k| !known.contains(k))
            .cloned()
            .collect();
        if !extra.is_empty() {
            return Err(Error::UnexpectedKeys(extra));
        }
        for (name, t) in &targets {
            t.copy_(&state[name].to_dtype(t.dtype())?)?;
        }
        Ok(())
    }

    /// Training mode (dropout active, σReparam power iteration runs).
    fn train(&self) {
        self.set_training(true)
    }

    /// Evaluation mode (dropout off, σReparam state frozen).
    fn eval(&self) {
        self.set_training(false)
    }

    /// Clear the gradient of every parameter.
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }
}

impl<M: Module + ?Sized> ModuleExt for M {}
