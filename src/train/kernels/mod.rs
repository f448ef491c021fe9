//! Fast CPU kernels for convolutional backbones, as candle custom ops with backward passes.
//!
//! Every function takes and returns NCHW `f32` tensors (candle-nn's layout; weights OIHW), so a
//! model switches from candle's stock op with a one-line change per call site:
//!
//! - [`conv2d`]: dense 2D convolution, any kernel size, stride and padding. On AVX-512 CPUs,
//!   3x3 stride-1 convolutions with 16+ channels take Winograd's F(2x2, 3x3) (`winograd.rs`),
//!   and the others a direct ("implicit GEMM") microkernel that reads the padded image instead
//!   of an im2col matrix (`direct.rs`); otherwise, and for 1x1 or very short `K`, tiled
//!   im2col and GEMM (the `gemm` crate with its AVX-512 kernels, single-threaded per piece).
//!   Images split across the cores.
//! - [`depthwise_conv2d`]: one filter per channel (weights `[C, 1, kh, kw]`), any stride; planes
//!   split across the cores, each plane padded once into an L1/L2-resident scratch and swept with
//!   all taps fused (AVX-512 when the CPU has it, picked at run time).
//! - [`conv2d_fused`], [`depthwise_conv2d_fused`]: the same with a per-channel bias and an
//!   activation ([`Act`]) applied to each tile or plane as it is written (see `epilogue.rs`).
//! - [`max_pool2d`]: max pooling with any kernel, stride and padding (kernel != stride included,
//!   which candle's own max-pool cannot differentiate).
//!
//! Backward passes compute each gradient only for the inputs that track one (a frozen weight or
//! the input images get `None`), and compute dX and dW in one pass over the data.
//!
//! Only the CPU is supported; other devices get an error.

mod conv;
mod depthwise;
#[cfg(target_arch = "x86_64")]
mod direct;
mod epilogue;
mod gemm;
mod pad;
mod par;
mod phase;
mod pool;
mod prefetch;
mod settings;
mod simd;
#[cfg(target_arch = "x86_64")]
mod winograd;

#[cfg(test)]
mod tests;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result, Tensor};

pub use epilogue::Act;
pub(crate) use epilogue::{gated, Epilogue};
pub use pad::{Pad, SamePadding};
pub use par::threads;
pub(crate) use par::{par_items_zeroed, par_map};
pub use settings::{configure, KernelSettings};
pub use simd::has_avx512;
pub(crate) use simd::{dispatch, Kernel};

/// Resolved geometry along one spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Axis {
    /// Input size.
    pub size: usize,
    /// Kernel size.
    pub k: usize,
    pub stride: usize,
    /// Pad before the first element (top or left).
    pub pad: usize,
    /// Output size.
    pub out: usize,
}

impl Axis {
    /// Along the height (`vertical`) or the width.
    pub(crate) fn along(vertical: bool, size: usize, k: usize, stride: usize, pad: Pad) -> Result<Self> {
        let (before, after) = if vertical { (pad.top, pad.bottom) } else { (pad.left, pad.right) };
        if stride == 0 || k == 0 {
            bail!("kernels: stride and kernel size must be positive")
        }
        if before >= k || after >= k {
            bail!("kernels: padding ({before}, {after}) must be smaller than the kernel size {k}")
        }
        if size + before + after < k {
            bail!("kernels: input size {size} with padding ({before}, {after}) is smaller than the kernel size {k}")
        }
        Ok(Self { size, k, stride, pad: before, out: (size + before + after - k) / stride + 1 })
    }
}

/// `out[j] = row[start + j * step]`, or `fill` where that index falls outside `row`.
#[inline]
pub(crate) fn gather_row(out: &mut [f32], row: &[f32], start: isize, step: usize, fill: f32) {
    let w = row.len() as isize;
    if step == 1 {
        let len = out.len() as isize;
        let lo = (-start).clamp(0, len);
        let hi = (w - start).clamp(lo, len);
        let (lo, hi) = (lo as usize, hi as usize);
        out[..lo].fill(fill);
        out[hi..].fill(fill);
        let s = (start + lo as isize) as usize;
        out[lo..hi].copy_from_slice(&row[s..s + (hi - lo)]);
    } else {
        // The outputs whose index lands inside the row: lo..hi.
        let len = out.len() as isize;
        let step_i = step as isize;
        let lo = if start >= 0 { 0 } else { (-start + step_i - 1) / step_i }.min(len);
        let hi = if start >= w { lo } else { ((w - start + step_i - 1) / step_i).clamp(lo, len) };
        let (lo, hi) = (lo as usize, hi as usize);
        out[..lo].fill(fill);
        out[hi..].fill(fill);
        if lo < hi {
            // Unclamped here: start + lo * step is the first index inside the row.
            let first = (start + (lo * step) as isize) as usize;
            // A strided read without per-element index checks (so that it vectorises).
            for (o, chunk) in out[lo..hi].iter_mut().zip(row[first..].chunks(step)) {
                *o = chunk[0];
            }
        }
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => bail!("kernels: expected a contiguous f32 CPU tensor"),
    }
}

/// The contiguous f32 data of a storage/layout pair.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("kernels: {what} must be f32, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("kernels: {what} must be contiguous"),
    }
}

pub(crate) fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("kernels: {what} must have 4 dimensions, got {d:?}"),
    }
}

/// Splits the flat output of a fused backward op into the gradients it holds.
pub(crate) fn split_grads(
    flat: Tensor,
    first: Option<&Tensor>,
    second: Option<&Tensor>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let n1 = first.map_or(0, |t| t.elem_count());
    let g1 = match first {
        Some(t) => Some(flat.narrow(0, 0, n1)?.reshape(t.shape())?),
        None => None,
    };
    let g2 = match second {
        Some(t) => Some(flat.narrow(0, n1, t.elem_count())?.reshape(t.shape())?),
        None => None,
    };
    Ok((g1, g2))
}

/// Dense 2D convolution: `x` `[N, Ci, H, W]`, `w` `[Co, Ci, kh, kw]` -> `[N, Co, Ho, Wo]`.
///
/// Drop-in for `x.conv2d(w, p, stride, 1, 1)` with `Pad::uniform(p)`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: Pad) -> Result<Tensor> {
    conv2d_fused(x, w, None, Act::Identity, stride, padding)
}

/// [`conv2d`] followed by `act(y + bias[channel])` in the same pass (`bias` `[Co]`), with the
/// gradients of all three inputs.
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    stride: usize,
    padding: Pad,
) -> Result<Tensor> {
    let op = conv::Conv2d { stride, padding, act };
    match bias {
        Some(b) => x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        None => x.contiguous()?.apply_op2(&w.contiguous()?, op),
    }
}

/// Depthwise 2D convolution: `x` `[N, C, H, W]`, `w` `[C, 1, kh, kw]` -> `[N, C, Ho, Wo]`.
///
/// Drop-in for `x.conv2d(w, p, stride, 1, C)` with `Pad::uniform(p)`.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: Pad) -> Result<Tensor> {
    depthwise_conv2d_fused(x, w, None, Act::Identity, stride, padding)
}

/// [`depthwise_conv2d`] followed by `act(y + bias[channel])` in the same pass (`bias` `[C]`).
pub fn depthwise_conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    stride: usize,
    padding: Pad,
) -> Result<Tensor> {
    let op = depthwise::Depthwise { stride, padding, act };
    match bias {
        Some(b) => x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, op),
        None => x.contiguous()?.apply_op2(&w.contiguous()?, op),
    }
}

/// Max pooling over `kernel x kernel` windows: `x` `[N, C, H, W]` -> `[N, C, Ho, Wo]`. Padded
/// positions never win. Drop-in for `x.max_pool2d_with_stride(kernel, stride)` with
/// `Pad::default()`, and differentiable for any kernel and stride.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: Pad) -> Result<Tensor> {
    x.contiguous()?.apply_op1(pool::MaxPool { kernel, stride, padding })
}
