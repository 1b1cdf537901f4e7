//! Shapes, strides and the broadcasting rules.

use crate::{Error, Result};
use smallvec::SmallVec;

/// Dimensions of a tensor, outermost first.
pub type Shape = SmallVec<[usize; 6]>;

/// How a logical (row-major) index maps into storage: `offset + Σ index[d]·strides[d]`.
/// Strides are in elements; a stride of 0 repeats data (broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Shape,
    offset: usize,
}

/// Row-major (C-contiguous) strides for `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Shape {
    let mut strides: Shape = SmallVec::from_elem(0, shape.len());
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = acc;
        acc *= shape[d];
    }
    strides
}

/// Number of elements of `shape`, or `None` when it overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Number of elements of `shape`, erroring (naming `op` and the shape) when it overflows
/// `usize` or when so many elements of the widest dtype (8 bytes) could not be allocated,
/// so that ops check their output shape before allocating instead of panicking.
pub(crate) fn numel_of(op: &'static str, shape: &[usize]) -> Result<usize> {
    let n = checked_numel(shape).ok_or_else(|| {
        Error::invalid(
            op,
            format!("shape {shape:?} has more elements than usize can count"),
        )
    })?;
    if n > isize::MAX as usize / 8 {
        return Err(Error::invalid(
            op,
            format!("shape {shape:?} has too many elements to allocate"),
        ));
    }
    Ok(n)
}

/// NumPy broadcasting of two shapes: align on the right; each pair of sizes must be equal
/// or one of them 1. A size 0 broadcast against 1 gives 0.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Shape> {
    let rank = a.len().max(b.len());
    let mut out: Shape = SmallVec::from_elem(0, rank);
    for i in 0..rank {
        let da = if i < rank - a.len() {
            1
        } else {
            a[i - (rank - a.len())]
        };
        let db = if i < rank - b.len() {
            1
        } else {
            b[i - (rank - b.len())]
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::ShapeMismatch {
                op,
                lhs: a.to_vec(),
                rhs: b.to_vec(),
            });
        };
    }
    Ok(out)
}

impl Layout {
    /// A dense row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.into(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A layout from explicit parts (no validation against a storage).
    pub fn new(shape: Shape, strides: Shape, offset: usize) -> Self {
        debug_assert_eq!(shape.len(), strides.len());
        Layout {
            shape,
            strides,
            offset,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether elements are stored densely in row-major order. Strides of size-1
    /// dimensions are ignored; an empty tensor is contiguous.
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            return true;
        }
        let mut acc = 1;
        for d in (0..self.rank()).rev() {
            if self.shape[d] != 1 {
                if self.strides[d] != acc {
                    return false;
                }
                acc *= self.shape[d];
            }
        }
        true
    }

    /// Offset range `[offset, offset + n)` of the data when contiguous. An empty view gives
    /// `0..0`: its offset may point past the end of the storage (a zero-length narrow at the
    /// end of a dim), so it must never be used to slice.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        let n = self.numel();
        if n == 0 {
            return Some(0..0);
        }
        self.is_contiguous().then(|| self.offset..self.offset + n)
    }

    /// The layout viewed with `shape` by broadcasting (stride 0 on new or size-1 dims).
    pub fn broadcast_to(&self, op: &'static str, shape: &[usize]) -> Result<Layout> {
        let err = || Error::ShapeMismatch {
            op,
            lhs: self.shape.to_vec(),
            rhs: shape.to_vec(),
        };
        if shape.len() < self.rank() {
            return Err(err());
        }
        numel_of(op, shape)?;
        let lead = shape.len() - self.rank();
        let mut strides: Shape = SmallVec::from_elem(0, shape.len());
        for d in 0..self.rank() {
            let (have, want) = (self.shape[d], shape[lead + d]);
            if have == want {
                strides[lead + d] = self.strides[d];
            } else if have != 1 {
                return Err(err());
            }
        }
        Ok(Layout::new(shape.into(), strides, self.offset))
    }

    /// Swap two dimensions (no data movement).
    pub fn transpose(&self, d0: usize, d1: usize) -> Layout {
        let mut l = self.clone();
        l.shape.swap(d0, d1);
        l.strides.swap(d0, d1);
        l
    }

    /// Reorder dimensions: new dim `i` is old dim `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout::new(
            perm.iter().map(|&p| self.shape[p]).collect(),
            perm.iter().map(|&p| self.strides[p]).collect(),
            self.offset,
        )
    }

    /// Restrict dimension `dim` to `start..start + len`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut l = self.clone();
        l.offset += start * self.strides[dim];
        l.shape[dim] = len;
        l
    }

    /// The storage offset of every element, in row-major logical order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }

    /// Calls `f(row, base_offset)` for every row of the innermost dimension; the row's
    /// elements sit at `base_offset + j·inner_stride` for `j < inner_len`.
    pub fn for_each_row(&self, mut f: impl FnMut(usize, usize)) {
        let rank = self.rank();
        if self.numel() == 0 {
            return;
        }
        if rank <= 1 {
            f(0, self.offset);
            return;
        }
        let outer = &self.shape[..rank - 1];
        let n_rows: usize = outer.iter().product();
        let mut idx: Shape = SmallVec::from_elem(0, rank - 1);
        let mut base = self.offset;
        for row in 0..n_rows {
            f(row, base);
            for d in (0..rank - 1).rev() {
                idx[d] += 1;
                base += self.strides[d];
                if idx[d] < outer[d] {
                    break;
                }
                base -= self.strides[d] * outer[d];
                idx[d] = 0;
            }
        }
    }

    /// Storage offset of the first element of innermost row number `row`.
    pub fn row_offset(&self, mut row: usize) -> usize {
        let rank = self.rank();
        let mut off = self.offset;
        for d in (0..rank.saturating_sub(1)).rev() {
            off += (row % self.shape[d]) * self.strides[d];
            row /= self.shape[d];
        }
        off
    }

    /// Length and stride of the innermost dimension (1, 0 for a scalar).
    pub fn inner(&self) -> (usize, usize) {
        match self.rank() {
            0 => (1, 0),
            r => (self.shape[r - 1], self.strides[r - 1]),
        }
    }
}

/// Iterator over storage offsets of a layout in logical order.
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    idx: Shape,
    next: usize,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        StridedOffsets {
            layout,
            idx: SmallVec::from_elem(0, layout.rank()),
            next: layout.offset,
            remaining: layout.numel(),
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let cur = self.next;
        let l = self.layout;
        for d in (0..l.rank()).rev() {
            self.idx[d] += 1;
            self.next += l.strides[d];
            if self.idx[d] < l.shape[d] {
                break;
            }
            self.next -= l.strides[d] * l.shape[d];
            self.idx[d] = 0;
        }
        Some(cur)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(
            broadcast_shapes("t", &[2, 1], &[1, 3]).unwrap().to_vec(),
            vec![2, 3]
        );
        assert_eq!(broadcast_shapes("t", &[0], &[1]).unwrap().to_vec(), vec![0]);
        assert_eq!(
            broadcast_shapes("t", &[4, 3], &[3]).unwrap().to_vec(),
            vec![4, 3]
        );
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
    }

    #[test]
    fn contiguity_ignores_size_one_strides() {
        let l = Layout::new(
            [1, 2048].into_iter().collect(),
            [16384, 1].into_iter().collect(),
            0,
        );
        assert!(l.is_contiguous());
        let t = Layout::contiguous(&[2, 3]).transpose(0, 1);
        assert!(!t.is_contiguous());
        assert_eq!(t.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(t.row_offset(2), 2);
    }
}
