//! The tensor type: shared storage, a strided layout, and an optional autograd node.

use crate::autograd::{self, GradFn};
use crate::dtype::with_dtype;
use crate::layout::{broadcast_shapes, numel_of, Layout};
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Error, Float, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// Unique identity of a tensor (never derived from its value, so two leaves holding equal
/// numbers stay two leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Leaves are created by the user; non-leaves by a recorded op.
    pub(crate) is_leaf: bool,
    pub(crate) requires_grad: AtomicBool,
    /// The op that produced this tensor; taken (freed) by `backward`.
    pub(crate) grad_fn: Mutex<Option<Arc<GradFn>>>,
    /// Accumulated gradient (leaves that require grad).
    pub(crate) grad: Mutex<Option<Tensor>>,
}

/// An n-dimensional array of `f32` or `f64` on a [`Device`], cheap to clone (reference
/// counted). Views (transpose, permute, narrow, broadcast, reshape of contiguous data)
/// share storage without copying.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data = self.to_vec_f64().unwrap_or_default();
        let shown: Vec<f64> = data.iter().take(16).copied().collect();
        f.debug_struct("Tensor")
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .field("device", &self.device())
            .field("data", &shown)
            .field("requires_grad", &self.requires_grad())
            .finish()
    }
}

impl Tensor {
    #[allow(dead_code)] // kept for ops that hold only a storage
    pub(crate) fn from_parts(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        is_leaf: bool,
        grad_fn: Option<Arc<GradFn>>,
    ) -> Tensor {
        let (dtype, device) = {
            let s = storage.read().expect("storage lock poisoned");
            (s.dtype(), s.device())
        };
        Tensor::from_parts_typed(storage, layout, is_leaf, grad_fn, dtype, device)
    }

    /// [`Tensor::from_parts`] when the storage's dtype and device are already known (saves
    /// taking the storage lock on every op).
    pub(crate) fn from_parts_typed(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        is_leaf: bool,
        grad_fn: Option<Arc<GradFn>>,
        dtype: DType,
        device: Device,
    ) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::fresh(),
            storage,
            layout,
            dtype,
            device,
            is_leaf,
            requires_grad: AtomicBool::new(grad_fn.is_some()),
            grad_fn: Mutex::new(grad_fn),
            grad: Mutex::new(None),
        }))
    }

    /// A fresh leaf tensor owning `data` laid out contiguously as `shape`.
    pub(crate) fn from_cpu(data: CpuStorage, shape: &[usize]) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let dtype = data.dtype();
        Tensor::from_parts_typed(
            Arc::new(RwLock::new(Storage::Cpu(data))),
            Layout::contiguous(shape),
            true,
            None,
            dtype,
            Device::Cpu,
        )
    }

    /// A leaf tensor from a vector in row-major order.
    ///
    /// Errors with [`Error::InvalidArgument`] when `data.len()` is not the product of `shape`.
    pub fn from_vec<T: Float>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
        let n = numel_of("from_vec", shape)?;
        if data.len() != n {
            return Err(Error::invalid(
                "from_vec",
                format!("{} elements cannot have shape {shape:?}", data.len()),
            ));
        }
        Ok(Tensor::from_cpu(T::wrap(data), shape))
    }

    /// A leaf tensor from `f64` values converted to `dtype`.
    pub fn from_f64s(data: &[f64], shape: &[usize], dtype: DType) -> Result<Tensor> {
        with_dtype!(dtype, T => Tensor::from_vec(
            data.iter().map(|&x| T::from_f64_lossy(x)).collect::<Vec<T>>(),
            shape,
        ))
    }

    /// A 0-dimensional tensor holding `value`.
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(&[], value, dtype)
    }

    /// A tensor of `shape` filled with `value`.
    ///
    /// # Panics
    /// When the element count overflows `usize` or cannot be allocated, as `vec!` does.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = numel_or_panic(shape);
        with_dtype!(dtype, T => Tensor::from_cpu(T::wrap(vec![T::from_f64_lossy(value); n]), shape))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// Zeros with the shape and dtype of `self`.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape(), self.dtype())
    }

    /// Ones with the shape and dtype of `self`.
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape(), self.dtype())
    }

    /// The 1-D tensor `[start, start+step, …]` of values below `end` (PyTorch `arange`).
    ///
    /// Errors when `step` is zero or not finite.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("step must be finite and non-zero, got {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Tensor::from_f64s(&v, &[n], dtype)
    }

    /// Uniform samples in `[lo, hi)` drawn from `rng` (reproducible for a seeded RNG).
    /// Panics like [`Tensor::full`].
    pub fn rand(
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Tensor {
        let n = numel_or_panic(shape);
        let v: Vec<f64> = (0..n)
            .map(|_| rng.gen_range(lo..hi.max(lo + f64::MIN_POSITIVE)))
            .collect();
        Tensor::from_f64s(&v, shape, dtype).expect("length matches shape")
    }

    /// Normal samples with `mean` and standard deviation `std` drawn from `rng`.
    /// Panics like [`Tensor::full`].
    pub fn randn(
        shape: &[usize],
        mean: f64,
        std: f64,
        dtype: DType,
        rng: &mut impl rand::Rng,
    ) -> Tensor {
        use rand_distr::Distribution;
        let n = numel_or_panic(shape);
        let normal = rand_distr::StandardNormal;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                let z: f64 = normal.sample(rng);
                mean + std * z
            })
            .collect();
        Tensor::from_f64s(&v, shape, dtype).expect("length matches shape")
    }

    /// Unique identity of this tensor.
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }

    /// Alias of [`Tensor::shape`].
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// Device holding the data.
    pub fn device(&self) -> Device {
        self.0.device
    }

    /// The strided layout of this view.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// Whether the data is dense row-major.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// Size of dimension `dim`, erroring when out of range.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.check_dim("dim", dim)?;
        Ok(self.shape()[dim])
    }

    pub(crate) fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op,
                dim,
                shape: self.shape().to_vec(),
            });
        }
        Ok(())
    }

    pub(crate) fn read_storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("storage lock poisoned")
    }

    /// Borrow the CPU data of type `T` (whole storage) and this view's layout.
    pub(crate) fn with_cpu<T: Float, R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&[T], &Layout) -> R,
    ) -> Result<R> {
        let guard = self.read_storage();
        match &*guard {
            Storage::Cpu(cs) => {
                let data = T::slice(cs).ok_or(Error::DTypeMismatch {
                    op,
                    lhs: T::DTYPE,
                    rhs: cs.dtype(),
                })?;
                Ok(f(data, &self.0.layout))
            }
        }
    }

    /// The range of a contiguous CPU view in its storage, for the slice accessors.
    fn dense_range(&self, op: &'static str) -> Result<std::ops::Range<usize>> {
        if self.device() != Device::Cpu {
            return Err(Error::UnsupportedDevice {
                op,
                device: self.device(),
            });
        }
        self.0
            .layout
            .contiguous_range()
            .ok_or_else(|| Error::invalid(op, "the tensor is not contiguous"))
    }

    /// Call `f` with the elements of this tensor in row-major order, borrowed without a
    /// copy. Errors with [`Error::DTypeMismatch`] when `T` is not the dtype,
    /// [`Error::UnsupportedDevice`] off the CPU and [`Error::InvalidArgument`] for a
    /// non-contiguous view.
    ///
    /// The storage stays read-locked while `f` runs: `f` must not write (through
    /// [`Tensor::with_data_mut`] or [`Tensor::copy_`]) a tensor sharing this storage, which
    /// would deadlock.
    pub fn with_data<T: Float, R>(&self, f: impl FnOnce(&[T]) -> R) -> Result<R> {
        let range = self.dense_range("with_data")?;
        self.with_cpu("with_data", |data: &[T], _| f(&data[range]))
    }

    /// Call `f` with the elements of this tensor in row-major order, mutably borrowed so
    /// that `f` overwrites them in place. Not recorded by autograd (like [`Tensor::copy_`]);
    /// every view sharing the storage sees the change, including graphs that saved this
    /// tensor for their backward (there is no version check: change a parameter only
    /// between steps, as optimizers do). Errors like [`Tensor::with_data`].
    ///
    /// The storage stays write-locked while `f` runs: `f` must not access a tensor sharing
    /// this storage, which would deadlock.
    pub fn with_data_mut<T: Float, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        let range = self.dense_range("with_data_mut")?;
        let mut guard = self.0.storage.write().expect("storage lock poisoned");
        match &mut *guard {
            Storage::Cpu(cs) => {
                let dtype = cs.dtype();
                let data = T::slice_mut(cs).ok_or(Error::DTypeMismatch {
                    op: "with_data_mut",
                    lhs: T::DTYPE,
                    rhs: dtype,
                })?;
                Ok(f(&mut data[range]))
            }
        }
    }

    /// The elements in row-major order as a vector of `T` (which must be the dtype).
    pub fn to_vec<T: Float>(&self) -> Result<Vec<T>> {
        self.with_cpu::<T, _>("to_vec", |d, l| match l.contiguous_range() {
            Some(r) => d[r].to_vec(),
            None => l.offsets().map(|o| d[o]).collect(),
        })
    }

    /// The elements in row-major order converted to `f64`.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        with_dtype!(self.dtype(), T => Ok(self.to_vec::<T>()?.into_iter().map(|x| x.to_f64_lossless()).collect()))
    }

    /// The single value of a one-element tensor as `f64`.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::invalid(
                "item",
                format!("needs one element, shape is {:?}", self.shape()),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// A copy converted to `dtype` (differentiable; the gradient is converted back).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let v = self.to_vec_f64()?;
        let out = Tensor::from_f64s(&v, self.shape(), dtype)?;
        let src = self.dtype();
        Ok(out.record(&[self], "to_dtype", move |g| {
            Ok(vec![Some(g.to_dtype(src)?)])
        }))
    }

    /// Error unless `self` and `other` share dtype and device.
    pub(crate) fn check_same(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: other.dtype(),
            });
        }
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        Ok(())
    }

    /// The broadcast shape of `self` and `other` (NumPy rules), checking dtype and device.
    pub(crate) fn broadcast_with(&self, op: &'static str, other: &Tensor) -> Result<crate::Shape> {
        self.check_same(op, other)?;
        broadcast_shapes(op, self.shape(), other.shape())
    }

    /// Overwrite the data of this tensor in place with `src`'s values (same shape and dtype).
    /// Not recorded by autograd: meant for optimizers and checkpoint loading. Every view
    /// sharing the storage sees the change.
    pub fn copy_(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "copy_",
                lhs: self.shape().to_vec(),
                rhs: src.shape().to_vec(),
            });
        }
        self.check_same("copy_", src)?;
        with_dtype!(self.dtype(), T => {
            let values = src.to_vec::<T>()?;
            let mut guard = self.0.storage.write().expect("storage lock poisoned");
            match &mut *guard {
                Storage::Cpu(cs) => {
                    let data = T::slice_mut(cs).expect("dtype checked");
                    let l = &self.0.layout;
                    match l.contiguous_range() {
                        Some(r) => data[r].copy_from_slice(&values),
                        None => {
                            for (o, v) in l.offsets().zip(values) {
                                data[o] = v;
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }

    // ----- autograd surface -------------------------------------------------------------

    /// Whether gradients flow to this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Mark a leaf as requiring (or not) a gradient; returns `self` for chaining.
    ///
    /// Errors when called on a non-leaf (the output of a recorded op).
    pub fn requires_grad_(self, on: bool) -> Result<Tensor> {
        if !self.0.is_leaf {
            return Err(Error::invalid(
                "requires_grad_",
                "only leaf tensors can change requires_grad; use detach() first",
            ));
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(self)
    }

    /// Whether this tensor was created by the user rather than by a recorded op.
    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }

    /// The accumulated gradient of a leaf, if any backward pass reached it.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().expect("grad lock poisoned").clone()
    }

    /// Reset the accumulated gradient to none.
    pub fn zero_grad(&self) {
        *self.0.grad.lock().expect("grad lock poisoned") = None;
    }

    /// A new leaf sharing this tensor's data, cut from the graph and not requiring grad.
    pub fn detach(&self) -> Tensor {
        self.share_storage(self.0.layout.clone())
    }

    /// A new untracked leaf over this tensor's storage with `layout`.
    fn share_storage(&self, layout: Layout) -> Tensor {
        Tensor::from_parts_typed(
            self.0.storage.clone(),
            layout,
            true,
            None,
            self.0.dtype,
            self.0.device,
        )
    }

    /// A view of the same storage with another layout, recorded with `backward`.
    pub(crate) fn view_with<F>(&self, layout: Layout, name: &'static str, backward: F) -> Tensor
    where
        F: Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        self.share_storage(layout).record(&[self], name, backward)
    }

    /// Attach an autograd node to a freshly computed tensor: when gradients are enabled and
    /// any input requires grad, `backward(grad_of_output)` must return one optional gradient
    /// per input (it may have the output's broadcast shape; the engine sums it back to the
    /// input's shape). Public so users can add their own differentiable ops.
    pub fn record<F>(self, inputs: &[&Tensor], name: &'static str, backward: F) -> Tensor
    where
        F: Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        if !autograd::is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            return self;
        }
        let gf = Arc::new(GradFn::new(
            name,
            inputs.iter().map(|t| (*t).clone()).collect(),
            Box::new(backward),
        ));
        let mut out = self;
        match Arc::get_mut(&mut out.0) {
            // The usual case: a freshly computed tensor nobody else holds becomes the node
            // in place (no second allocation).
            Some(inner) => {
                inner.is_leaf = false;
                *inner.requires_grad.get_mut() = true;
                *inner.grad_fn.get_mut().expect("grad_fn lock poisoned") = Some(gf);
                out
            }
            None => Tensor::from_parts_typed(
                out.0.storage.clone(),
                out.0.layout.clone(),
                false,
                Some(gf),
                out.0.dtype,
                out.0.device,
            ),
        }
    }

    pub(crate) fn inner(&self) -> &TensorInner {
        &self.0
    }
}

/// Element count of a shape for the infallible constructors, which panic on overflow like
/// `vec!` does on capacity overflow.
fn numel_or_panic(shape: &[usize]) -> usize {
    crate::layout::checked_numel(shape)
        .unwrap_or_else(|| panic!("shape {shape:?} has more elements than usize can count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_accessors_borrow_the_view_in_place() {
        let t = Tensor::arange(0.0, 6.0, 1.0, DType::F32)
            .unwrap()
            .reshape(&[2, 3])
            .unwrap();
        let row = t.narrow(0, 1, 1).unwrap();
        row.with_data_mut(|d: &mut [f32]| d.iter_mut().for_each(|x| *x *= 10.0))
            .unwrap();
        assert_eq!(
            t.with_data(|d: &[f32]| d.to_vec()).unwrap(),
            [0.0, 1.0, 2.0, 30.0, 40.0, 50.0]
        );
        assert!(matches!(
            t.with_data(|d: &[f64]| d.len()),
            Err(Error::DTypeMismatch { .. })
        ));
        assert!(matches!(
            t.transpose(0, 1)
                .unwrap()
                .with_data_mut(|d: &mut [f32]| d.len()),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
