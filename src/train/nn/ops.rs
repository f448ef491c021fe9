//! Tensor operations the layers are built from that candle lacks in the form needed: explicit
//! (asymmetric) padding, TensorFlow's "SAME" padding arithmetic, depthwise convolution and
//! overlapping max pooling, both as sums/maxima of shifted strided views so that every step has
//! a gradient (candle's own max-pool backward refuses a window larger than its stride).
//!
//! Everything is NCHW. Each op runs [`crate::train::kernels`] (fast CPU custom ops with their own
//! backward) unless the forward pass's [`Backend`] says [`Backend::Stock`]: then the reference
//! implementations built from candle's own ops run, which benchmarks time side by side.

use candle_core::Tensor;

use crate::train::error::TrainError;
use crate::train::kernels::{self, Act};
pub use crate::train::kernels::{Pad, SamePadding};
use crate::train::nn::ctx::Backend;

/// Pads `x` (`[n, c, h, w]`) with `value` on each side.
pub fn pad(x: &Tensor, p: Pad, value: f32) -> Result<Tensor, TrainError> {
    if p == Pad::default() {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return Ok(x.pad_with_zeros(2, p.top, p.bottom)?.pad_with_zeros(3, p.left, p.right)?);
    }
    let side = |x: &Tensor, dim: usize, a: usize, b: usize| -> Result<Tensor, TrainError> {
        if a == 0 && b == 0 {
            return Ok(x.clone());
        }
        let mut shape = x.dims().to_vec();
        let mut parts = Vec::with_capacity(3);
        if a > 0 {
            shape[dim] = a;
            parts.push(Tensor::full(value, shape.as_slice(), x.device())?);
        }
        parts.push(x.clone());
        if b > 0 {
            shape[dim] = b;
            parts.push(Tensor::full(value, shape.as_slice(), x.device())?);
        }
        Ok(Tensor::cat(&parts, dim)?)
    };
    let x = side(x, 2, p.top, p.bottom)?;
    side(&x, 3, p.left, p.right)
}

/// The `kernel * kernel` shifted views of a `kernel` window at `stride` over `x` (`[n, c, h, w]`,
/// already padded), each `[n, c, oh, ow]`, in row-major window order. Built from `narrow` and
/// `reshape`, so gradients flow back into `x`. `fill` pads the bottom/right when the strided
/// split needs more rows than there are; those pixels are never part of a view.
pub fn windows(x: &Tensor, kernel: usize, stride: usize, fill: f32) -> Result<Vec<Tensor>, TrainError> {
    let (n, c, h, w) = x.dims4()?;
    if h < kernel || w < kernel {
        return Err(TrainError::Candle(candle_core::Error::Msg(format!(
            "{h}x{w} input is smaller than a {kernel}x{kernel} window"
        ))));
    }
    let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let mut views = Vec::with_capacity(kernel * kernel);
    if stride == 1 {
        for i in 0..kernel {
            for j in 0..kernel {
                views.push(x.narrow(2, i, oh)?.narrow(3, j, ow)?);
            }
        }
        return Ok(views);
    }
    // Split into stride x stride phases (`phase[a][b] = x[.., a::stride, b::stride]`); a view at
    // window offset (i, j) is then a stride-1 crop of phase (i % stride, j % stride).
    let reach = kernel.div_ceil(stride).saturating_sub(1);
    let (ph, pw) = (oh + reach, ow + reach);
    let (need_h, need_w) = (ph * stride, pw * stride);
    let x = if need_h > h || need_w > w {
        pad(x, Pad { bottom: need_h.saturating_sub(h), right: need_w.saturating_sub(w), ..Pad::default() }, fill)?
    } else {
        x.clone()
    };
    let x = x.narrow(2, 0, need_h)?.narrow(3, 0, need_w)?.reshape((n, c, ph, stride, pw, stride))?;
    let mut phases = Vec::with_capacity(stride * stride);
    for a in 0..stride {
        for b in 0..stride {
            phases.push(x.narrow(3, a, 1)?.narrow(5, b, 1)?.reshape((n, c, ph, pw))?);
        }
    }
    for i in 0..kernel {
        for j in 0..kernel {
            let phase = &phases[(i % stride) * stride + j % stride];
            views.push(phase.narrow(2, i / stride, oh)?.narrow(3, j / stride, ow)?);
        }
    }
    Ok(views)
}

/// Depthwise convolution: `x` `[n, c, h, w]` (unpadded), `kernel` `[c, 1, k, k]`, then
/// `act(y + bias)` per channel (fused into the kernel on the fast backend).
pub fn depthwise_conv(
    backend: Backend,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    stride: usize,
    p: Pad,
) -> Result<Tensor, TrainError> {
    if backend == Backend::Fast {
        return Ok(kernels::depthwise_conv2d_fused(x, kernel, bias, act, stride, p)?);
    }
    let (c, _, k, _) = kernel.dims4()?;
    let x = pad(x, p, 0.0)?;
    let mut acc: Option<Tensor> = None;
    for (idx, view) in windows(&x, k, stride, 0.0)?.iter().enumerate() {
        // [1, c, 1, 1]
        let w = kernel.narrow(2, idx / k, 1)?.narrow(3, idx % k, 1)?.reshape((1, c, 1, 1))?;
        let term = view.broadcast_mul(&w)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    let y = acc.ok_or_else(|| TrainError::Candle(candle_core::Error::Msg("empty depthwise kernel".into())))?;
    stock_epilogue(y, bias, act)
}

/// The stock backend's bias add and activation, as separate candle ops.
pub(super) fn stock_epilogue(y: Tensor, bias: Option<&Tensor>, act: Act) -> Result<Tensor, TrainError> {
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    Ok(match act {
        Act::Identity => y,
        Act::Relu => y.relu()?,
        Act::Relu6 => y.clamp(0f32, 6f32)?,
    })
}

/// Max pooling of a `size` window at `stride` with padding that never wins (`-inf`), as
/// TensorFlow's `padding="same"` pooling.
pub fn max_pool(backend: Backend, x: &Tensor, size: usize, stride: usize, p: Pad) -> Result<Tensor, TrainError> {
    if backend == Backend::Fast {
        return Ok(kernels::max_pool2d(x, size, stride, p)?);
    }
    let x = pad(x, p, f32::NEG_INFINITY)?;
    let views = windows(&x, size, stride, f32::NEG_INFINITY)?;
    let mut acc = views[0].clone();
    for v in &views[1..] {
        acc = acc.maximum(v)?;
    }
    Ok(acc)
}

/// Non-overlapping `size` x `size` max pooling, "valid" padding. candle 0.11's own
/// `max_pool2d` (the stock backend) scales its gradient by 1/size²; the kernel's is exact.
pub fn max_pool_valid(backend: Backend, x: &Tensor, size: usize) -> Result<Tensor, TrainError> {
    match backend {
        Backend::Fast => Ok(kernels::max_pool2d(x, size, size, Pad::default())?),
        Backend::Stock => Ok(x.max_pool2d(size)?),
    }
}

/// `min(max(x, 0), 6)` (Keras `ReLU(6.0)`). candle's `clamp` is a `maximum` then a `minimum`
/// against broadcast scalars: two full passes forward and more backward, a fifth of a frozen
/// MobileNetV2 step. [`Relu6`] is one pass each way.
pub fn relu6(backend: Backend, x: &Tensor) -> Result<Tensor, TrainError> {
    match backend {
        Backend::Fast if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 => {
            Ok(x.contiguous()?.apply_op1(Relu6)?)
        }
        _ => Ok(x.clamp(0f32, 6f32)?),
    }
}

struct Relu6;

impl candle_core::CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "tanuki-relu6"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = kernels::f32_slice(s, l, "relu6 input")?;
        Ok((candle_core::CpuStorage::F32(kernels::par_map(x, x, |v, _| v.clamp(0.0, 6.0))), l.shape().clone()))
    }

    /// The gradient passes where `0 < x < 6` (where the output is neither bound).
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let dx = kernels::with_f32(x, |x| {
            kernels::with_f32(&dy, |dy| kernels::par_map(x, dy, |v, g| if v > 0.0 && v < 6.0 { g } else { 0.0 }))
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// A conv2d with explicit (possibly asymmetric) padding, then `act(y + bias)` per output
/// channel (fused into the kernel on the fast backend).
pub fn conv2d(
    backend: Backend,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    stride: usize,
    p: Pad,
) -> Result<Tensor, TrainError> {
    if backend == Backend::Fast {
        return Ok(kernels::conv2d_fused(x, kernel, bias, act, stride, p)?);
    }
    let y = if p.is_symmetric() {
        x.conv2d(kernel, p.top, stride, 1, 1)?
    } else {
        pad(x, p, 0.0)?.conv2d(kernel, 0, stride, 1, 1)?
    };
    stock_epilogue(y, bias, act)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(shape: (usize, usize, usize, usize)) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) -> bool {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn tensorflow_same_padding_is_bottom_right_heavy() {
        assert_eq!(Pad::same(3, 2, 224, 224, SamePadding::TensorFlow), Pad { top: 0, bottom: 1, left: 0, right: 1 });
        assert_eq!(Pad::same(3, 2, 75, 75, SamePadding::TensorFlow), Pad::uniform(1));
        assert_eq!(Pad::same(3, 1, 10, 10, SamePadding::TensorFlow), Pad::uniform(1));
        assert_eq!(Pad::same(1, 2, 36, 37, SamePadding::TensorFlow), Pad::default());
        assert_eq!(Pad::same(3, 2, 224, 224, SamePadding::Symmetric), Pad::uniform(1));
    }

    #[test]
    fn depthwise_matches_grouped_conv() {
        let x = ramp((2, 3, 8, 7));
        let k = (ramp((3, 1, 3, 3)) * 0.1).unwrap();
        for (stride, p) in
            [(1, Pad::uniform(1)), (2, Pad { top: 0, bottom: 1, left: 0, right: 1 }), (2, Pad::uniform(1))]
        {
            let ours = depthwise_conv(Backend::Fast, &x, &k, None, Act::Identity, stride, p).unwrap();
            let reference = pad(&x, p, 0.0).unwrap().conv2d(&k, 0, stride, 1, 3).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(close(&ours, &reference), "stride {stride} {p:?}");
        }
    }

    #[test]
    fn relu6_matches_clamp_forward_and_backward() {
        let x = Var::from_tensor(&(ramp((2, 3, 5, 4)) * 0.7).unwrap()).unwrap();
        let ours = relu6(Backend::Fast, x.as_tensor()).unwrap();
        let stock = x.as_tensor().clamp(0f32, 6f32).unwrap();
        assert!(close(&ours, &stock));
        let g = |y: Tensor| y.sqr().unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
        assert!(close(&g(ours), &g(stock)));
    }

    #[test]
    fn overlapping_max_pool_has_a_gradient() {
        let x = Var::from_tensor(&ramp((1, 2, 6, 5))).unwrap();
        let p = Pad::same(3, 2, 6, 5, SamePadding::TensorFlow);
        let y = max_pool(Backend::Fast, x.as_tensor(), 3, 2, p).unwrap();
        assert_eq!(y.dims(), &[1, 2, 3, 3]);
        // Brute force on the first channel.
        let v: Vec<Vec<f32>> = x.as_tensor().get(0).unwrap().get(0).unwrap().to_vec2().unwrap();
        let got: Vec<Vec<f32>> = y.get(0).unwrap().get(0).unwrap().to_vec2().unwrap();
        for (oi, row) in got.iter().enumerate() {
            for (oj, &m) in row.iter().enumerate() {
                let rows = &v[(2 * oi).saturating_sub(p.top)..(2 * oi + 3 - p.top).min(6)];
                let cols = (2 * oj).saturating_sub(p.left)..(2 * oj + 3 - p.left).min(5);
                let best = rows.iter().flat_map(|r| r[cols.clone()].iter().copied()).fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(m, best, "at {oi},{oj}");
            }
        }
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let total: f32 = g.sum_all().unwrap().to_scalar().unwrap();
        assert!((total - 18.0).abs() < 1e-4, "each output sends its gradient to its maxima: {total}");
    }
}
