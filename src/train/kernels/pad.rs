//! Spatial padding, the one type for it from the kernels up to the model plans: explicit rows
//! and columns per side, and the "same" padding arithmetic of TensorFlow and PyTorch that
//! computes them.

/// Zero (or `-inf`) padding per side, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

/// How "same" padding is split when the total is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamePadding {
    /// TensorFlow/Keras: the extra row/column goes at the bottom/right (at stride 2 and an even
    /// input, the top/left get none at all).
    TensorFlow,
    /// PyTorch: `kernel / 2` on every side, whatever the stride.
    Symmetric,
}

impl Pad {
    pub fn uniform(p: usize) -> Self {
        Self { top: p, bottom: p, left: p, right: p }
    }

    /// "Same" padding of a `kernel` x `kernel` window at `stride` over an `h` x `w` input, so
    /// that the output is `ceil(h / stride)` x `ceil(w / stride)`.
    pub fn same(kernel: usize, stride: usize, h: usize, w: usize, style: SamePadding) -> Self {
        match style {
            SamePadding::Symmetric => Self::uniform(kernel / 2),
            SamePadding::TensorFlow => {
                let total = |n: usize| ((n.div_ceil(stride) - 1) * stride + kernel).saturating_sub(n);
                let (th, tw) = (total(h), total(w));
                Self { top: th / 2, bottom: th - th / 2, left: tw / 2, right: tw - tw / 2 }
            }
        }
    }

    /// This padding and `other` on top of it, per side.
    pub fn plus(self, other: Pad) -> Pad {
        Pad {
            top: self.top + other.top,
            bottom: self.bottom + other.bottom,
            left: self.left + other.left,
            right: self.right + other.right,
        }
    }

    pub fn max_side(&self) -> usize {
        self.top.max(self.bottom).max(self.left).max(self.right)
    }

    pub fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.left == self.right && self.top == self.left
    }

    /// Output side of a `kernel` window at `stride` over `n` input pixels padded by `a + b`.
    pub fn out_side(n: usize, a: usize, b: usize, kernel: usize, stride: usize) -> usize {
        (n + a + b).saturating_sub(kernel) / stride + 1
    }

    /// Output `(h, w)` of a `kernel` window at `stride` over an `h` x `w` input with this padding.
    pub fn out_hw(&self, h: usize, w: usize, kernel: usize, stride: usize) -> (usize, usize) {
        (
            Self::out_side(h, self.top, self.bottom, kernel, stride),
            Self::out_side(w, self.left, self.right, kernel, stride),
        )
    }
}
