//! Reverse-mode differentiation: graph nodes, `backward`, `no_grad`, and the one rule that
//! sums broadcast gradients back to an input's shape.
//!
//! Rules, as in PyTorch:
//! - `backward()` starts from a one-element tensor, seeds it with 1 and ACCUMULATES into the
//!   `grad()` of every leaf that requires grad; call `zero_grad` between steps.
//! - The graph is freed as it is walked: a second `backward()` through the same graph is an
//!   error ([`crate::Error::Backward`]) unless the first used `backward_retain_graph()`.
//! - Node identity is a [`crate::TensorId`], never a value.
//! - Kinks and ties: `relu'(0) = 0`; `max` splits the gradient evenly among tied maxima.

use crate::layout::Layout;
use crate::storage::Storage;
use crate::{Error, Result, Tensor, TensorId};
use smallvec::SmallVec;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Hasher for [`TensorId`] keys: ids are distinct integers, so one multiplication mixes
/// them enough, and SipHash (the std default) dominated the cost of small backward passes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64 ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<TensorId, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<TensorId, BuildHasherDefault<IdHasher>>;

type BackwardFn = dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

/// The op that produced a non-leaf tensor: its inputs and its vector-Jacobian product.
pub(crate) struct GradFn {
    name: &'static str,
    inputs: SmallVec<[Tensor; 3]>,
    backward: Box<BackwardFn>,
}

impl GradFn {
    pub(crate) fn new(
        name: &'static str,
        inputs: SmallVec<[Tensor; 3]>,
        backward: Box<BackwardFn>,
    ) -> Self {
        GradFn {
            name,
            inputs,
            backward,
        }
    }
}

impl Drop for GradFn {
    /// Free the graph behind this node without recursion: a chain of N recorded ops would
    /// otherwise drop N nested `Arc`s and overflow the stack for long chains (an unrolled
    /// RNN, a loss that is never back-propagated). Inputs this node owns the last reference
    /// to are unlinked from their own nodes first, with an explicit work list.
    fn drop(&mut self) {
        let mut pending: Vec<Tensor> = self.inputs.drain(..).collect();
        while let Some(t) = pending.pop() {
            let Ok(inner) = Arc::try_unwrap(t.0) else {
                continue; // still shared: only the count drops
            };
            let gf = inner
                .grad_fn
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(Ok(mut gf)) = gf.map(Arc::try_unwrap) {
                pending.extend(gf.inputs.drain(..));
            }
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread currently record a graph.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped; see [`NoGradGuard::new`].
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    /// Disable graph recording on this thread until the guard is dropped.
    pub fn new() -> Self {
        let prev = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { prev }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Run `f` without recording a graph (PyTorch `torch.no_grad()`): outputs do not require grad.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = NoGradGuard::new();
    f()
}

impl Tensor {
    /// Back-propagate from this one-element tensor, accumulating into the leaves' `grad()`.
    /// Frees the graph. Errors when the tensor has more than one element, does not require
    /// grad, or its graph was already freed by an earlier backward.
    pub fn backward(&self) -> Result<()> {
        self.run_backward(false)
    }

    /// Like [`Tensor::backward`] but keeps the graph so it can be walked again.
    pub fn backward_retain_graph(&self) -> Result<()> {
        self.run_backward(true)
    }

    fn run_backward(&self, retain_graph: bool) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Backward(format!(
                "backward needs a one-element tensor, got shape {:?}",
                self.shape()
            )));
        }
        if !self.requires_grad() {
            return Err(Error::Backward("tensor does not require grad".into()));
        }
        let order = topo_order(self)?;
        let mut grads: IdMap<Tensor> = IdMap::default();
        grads.reserve(order.len());
        grads.insert(self.id(), self.ones_like());
        let _guard = NoGradGuard::new();
        for node in order.iter().rev() {
            let Some(g) = grads.remove(&node.id()) else {
                continue;
            };
            if node.is_leaf() {
                accumulate_leaf(node, g)?;
                continue;
            }
            let gf = {
                let mut slot = node.inner().grad_fn.lock().expect("grad_fn lock poisoned");
                if retain_graph {
                    slot.clone()
                } else {
                    slot.take()
                }
            };
            let Some(gf) = gf else {
                return Err(freed_error());
            };
            let in_grads = (gf.backward)(&g)?;
            if in_grads.len() != gf.inputs.len() {
                return Err(Error::Backward(format!(
                    "{} returned {} gradients for {} inputs",
                    gf.name,
                    in_grads.len(),
                    gf.inputs.len()
                )));
            }
            for (input, ig) in gf.inputs.iter().zip(in_grads) {
                let Some(ig) = ig else { continue };
                if !input.requires_grad() {
                    continue;
                }
                let ig = ig.sum_to(input.shape()).map_err(|e| {
                    Error::Backward(format!("{}: gradient does not fit its input: {e}", gf.name))
                })?;
                let ig = match grads.remove(&input.id()) {
                    Some(prev) => prev.add(&ig)?,
                    None => ig,
                };
                grads.insert(input.id(), ig);
            }
        }
        Ok(())
    }

    /// Sum a gradient of a broadcast shape back to `shape` (the reverse of broadcasting):
    /// leading extra dimensions and dimensions where `shape` has 1 are summed. This is the
    /// engine's single un-broadcasting rule.
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let err = || Error::ShapeMismatch {
            op: "sum_to",
            lhs: self.shape().to_vec(),
            rhs: shape.to_vec(),
        };
        if shape.len() > self.rank() {
            return Err(err());
        }
        let lead = self.rank() - shape.len();
        let mut dims: Vec<usize> = (0..lead).collect();
        for (d, &want) in shape.iter().enumerate() {
            let have = self.shape()[lead + d];
            if have != want {
                if want != 1 {
                    return Err(err());
                }
                dims.push(lead + d);
            }
        }
        self.sum(&dims, true)?.reshape(shape)
    }
}

fn freed_error() -> Error {
    Error::Backward(
        "the graph was already freed by a previous backward(); use backward_retain_graph() to walk it twice".into(),
    )
}

fn accumulate_leaf(leaf: &Tensor, g: Tensor) -> Result<()> {
    let mut slot = leaf.inner().grad.lock().expect("grad lock poisoned");
    let new = match slot.take() {
        Some(prev) => prev.add(&g)?,
        // A fresh, dense tensor that shares memory with nothing the user holds: the
        // gradient itself when it is the sole owner of dense storage (the usual case, a
        // freshly computed tensor), else a copy.
        None => match sole_dense_owner(g) {
            Ok(fresh) => fresh,
            Err(g) => g.dense_copy()?,
        },
    };
    *slot = Some(new);
    Ok(())
}

/// `g` re-wrapped as a fresh untracked leaf over the same memory when no other tensor can
/// reach that memory (no other handle to `g`, no other tensor on its storage) and `g` is
/// dense over all of it; `Err(g)` otherwise.
fn sole_dense_owner(g: Tensor) -> std::result::Result<Tensor, Tensor> {
    let storage = &g.0.storage;
    let unique = Arc::strong_count(&g.0) == 1
        && Arc::strong_count(storage) == 1
        && Arc::weak_count(storage) == 0;
    let whole = match &*g.read_storage() {
        Storage::Cpu(cs) => g.layout().contiguous_range() == Some(0..cs.len()),
    };
    if !(unique && whole) {
        return Err(g);
    }
    Ok(Tensor::from_parts_typed(
        storage.clone(),
        Layout::contiguous(g.shape()),
        true,
        None,
        g.dtype(),
        g.device(),
    ))
}

/// Tensors reachable from `root` through recorded nodes, in post-order (inputs first).
fn topo_order(root: &Tensor) -> Result<Vec<Tensor>> {
    let mut order = Vec::with_capacity(16);
    let mut seen = IdSet::default();
    seen.reserve(16);
    // (tensor, children already pushed)
    let mut stack: Vec<(Tensor, bool)> = Vec::with_capacity(16);
    stack.push((root.clone(), false));
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let gf = t
            .inner()
            .grad_fn
            .lock()
            .expect("grad_fn lock poisoned")
            .clone();
        if gf.is_none() && !t.is_leaf() {
            return Err(freed_error());
        }
        stack.push((t, true));
        if let Some(gf) = gf {
            for input in gf.inputs.iter().filter(|i| i.requires_grad()) {
                if !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use crate::{DType, Tensor};

    /// Leaves handed the same gradient tensor (both inputs of an add) get separate memory,
    /// and so does a leaf whose gradient is a fresh tensor.
    #[test]
    fn leaf_grads_never_alias() {
        let leaf = || {
            Tensor::ones(&[2, 3], DType::F64)
                .requires_grad_(true)
                .unwrap()
        };
        let (a, b, c) = (leaf(), leaf(), leaf());
        let y = a.add(&b).unwrap().mul(&c).unwrap();
        y.sum_all().unwrap().backward().unwrap();
        let (ga, gb, gc) = (a.grad().unwrap(), b.grad().unwrap(), c.grad().unwrap());
        ga.copy_(&Tensor::zeros(&[2, 3], DType::F64)).unwrap();
        assert_eq!(gb.to_vec::<f64>().unwrap(), vec![1.0; 6]);
        assert_eq!(gc.to_vec::<f64>().unwrap(), vec![2.0; 6]);
        gc.copy_(&Tensor::zeros(&[2, 3], DType::F64)).unwrap();
        assert_eq!(gb.to_vec::<f64>().unwrap(), vec![1.0; 6]);
    }
}
