//! Elementwise binary ops with NumPy broadcasting, and scalar affine ops.

use crate::cpu::{map, zip_map};
use crate::dtype::with_dtype;
use crate::{Float, Result, Tensor};

#[derive(Clone, Copy, Debug)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
    Maximum,
    Minimum,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Add => "add",
            Binary::Sub => "sub",
            Binary::Mul => "mul",
            Binary::Div => "div",
            Binary::Eq => "eq",
            Binary::Gt => "gt",
            Binary::Ge => "ge",
            Binary::Lt => "lt",
            Binary::Le => "le",
            Binary::Maximum => "maximum",
            Binary::Minimum => "minimum",
        }
    }

    fn run<T: Float>(self, a: &[T], la: &crate::Layout, b: &[T], lb: &crate::Layout) -> Vec<T> {
        let ind = |c: bool| if c { T::one() } else { T::zero() };
        match self {
            Binary::Add => zip_map(a, la, b, lb, |x, y| x + y),
            Binary::Sub => zip_map(a, la, b, lb, |x, y| x - y),
            Binary::Mul => zip_map(a, la, b, lb, |x, y| x * y),
            Binary::Div => zip_map(a, la, b, lb, |x, y| x / y),
            Binary::Eq => zip_map(a, la, b, lb, |x, y| ind(x == y)),
            Binary::Gt => zip_map(a, la, b, lb, |x, y| ind(x > y)),
            Binary::Ge => zip_map(a, la, b, lb, |x, y| ind(x >= y)),
            Binary::Lt => zip_map(a, la, b, lb, |x, y| ind(x < y)),
            Binary::Le => zip_map(a, la, b, lb, |x, y| ind(x <= y)),
            Binary::Maximum => zip_map(a, la, b, lb, |x, y| if y > x { y } else { x }),
            Binary::Minimum => zip_map(a, la, b, lb, |x, y| if y < x { y } else { x }),
        }
    }
}

impl Tensor {
    /// Forward of a broadcasting binary op (no graph).
    fn binary_forward(&self, other: &Tensor, op: Binary) -> Result<Tensor> {
        let shape = self.broadcast_with(op.name(), other)?;
        with_dtype!(self.dtype(), T => {
            let la = self.layout().broadcast_to(op.name(), &shape)?;
            let lb = other.layout().broadcast_to(op.name(), &shape)?;
            let out = self.with_cpu::<T, _>(op.name(), |a, _| {
                other.with_cpu::<T, _>(op.name(), |b, _| op.run(a, &la, b, &lb))
            })??;
            Tensor::from_vec(out, &shape)
        })
    }

    /// `self + other` with broadcasting. Errors on incompatible shapes, dtypes or devices.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        let out = self.binary_forward(other, Binary::Add)?;
        Ok(out.record(&[self, other], "add", |g| {
            Ok(vec![Some(g.clone()), Some(g.clone())])
        }))
    }

    /// `self - other` with broadcasting.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        let out = self.binary_forward(other, Binary::Sub)?;
        Ok(out.record(&[self, other], "sub", |g| {
            Ok(vec![Some(g.clone()), Some(g.neg()?)])
        }))
    }

    /// `self ⊙ other` with broadcasting.
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        let out = self.binary_forward(other, Binary::Mul)?;
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record(&[self, other], "mul", move |g| {
            Ok(vec![
                if ra { Some(g.mul(&b)?) } else { None },
                if rb { Some(g.mul(&a)?) } else { None },
            ])
        }))
    }

    /// `self / other` with broadcasting.
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        let out = self.binary_forward(other, Binary::Div)?;
        let (b, y) = (other.detach(), out.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record(&[self, other], "div", move |g| {
            let ga = g.div(&b)?;
            Ok(vec![
                if ra { Some(ga.clone()) } else { None },
                // d(a/b)/db = -(a/b)/b
                if rb { Some(ga.mul(&y)?.neg()?) } else { None },
            ])
        }))
    }

    /// Elementwise maximum with broadcasting; at ties the gradient goes to `self`.
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.select_by(other, Binary::Maximum, Binary::Ge)
    }

    /// Elementwise minimum with broadcasting; at ties the gradient goes to `self`.
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.select_by(other, Binary::Minimum, Binary::Le)
    }

    /// `op` whose gradient goes to `self` where `keep_self(self, other)` holds, else to `other`.
    fn select_by(&self, other: &Tensor, op: Binary, keep_self: Binary) -> Result<Tensor> {
        let out = self.binary_forward(other, op)?;
        let mask = self.binary_forward(other, keep_self)?;
        Ok(out.record(&[self, other], op.name(), move |g| split_by_mask(g, &mask)))
    }

    /// `1.0` where `self == other`, else `0.0` (broadcasting; not differentiable).
    pub fn eq(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_forward(other, Binary::Eq)
    }

    /// `1.0` where `self > other`, else `0.0` (broadcasting; not differentiable).
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_forward(other, Binary::Gt)
    }

    /// `1.0` where `self >= other`, else `0.0` (broadcasting; not differentiable).
    pub fn ge(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_forward(other, Binary::Ge)
    }

    /// `1.0` where `self < other`, else `0.0` (broadcasting; not differentiable).
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_forward(other, Binary::Lt)
    }

    /// `mul · self + add` elementwise with scalar constants.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        let out = with_dtype!(self.dtype(), T => {
            let (m, a) = (T::from_f64_lossy(mul), T::from_f64_lossy(add));
            let x = self.contiguous()?;
            let v = x.with_cpu::<T, _>("affine", |d, l| map(&d[l.contiguous_range().expect("contiguous")], |v| v * m + a))?;
            Tensor::from_vec(v, self.shape())?
        });
        Ok(out.record(&[self], "affine", move |g| {
            Ok(vec![Some(g.affine(mul, 0.0)?)])
        }))
    }

    /// `self · s` for a scalar `s`.
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }

    /// `self + s` for a scalar `s`.
    pub fn add_scalar(&self, s: f64) -> Result<Tensor> {
        self.affine(1.0, s)
    }

    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }
}

/// Gradient of a two-way selection: `g ⊙ mask` to the first input, `g ⊙ (1 − mask)` to the
/// second.
fn split_by_mask(g: &Tensor, mask: &Tensor) -> Result<Vec<Option<Tensor>>> {
    let first = g.mul(mask)?;
    let second = g.sub(&first)?;
    Ok(vec![Some(first), Some(second)])
}
