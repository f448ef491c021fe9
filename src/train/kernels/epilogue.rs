//! A per-channel bias and an activation applied to a kernel's output while it is still in cache.
//!
//! Run as separate ops, `conv → + bias → ReLU6` reads and writes the whole activation twice more
//! (and allocates it twice more): in a frozen MobileNetV2 step, where every batch norm is folded
//! into a bias, those two passes cost as much as the depthwise convolutions. Fused, the kernel
//! applies them to each tile or plane it has just written.
//!
//! Backward, the activation's gradient is taken from the op's output (`0 < y < 6` for ReLU6 is
//! `0 < z < 6` for its input `z`), so nothing extra is kept for it.

use candle_core::{bail, CustomOp3, Result, Tensor};

/// An activation fused into a kernel's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Act {
    #[default]
    Identity,
    /// `max(z, 0)`.
    Relu,
    /// `min(max(z, 0), 6)` (Keras `ReLU(6.0)`).
    Relu6,
}

impl Act {
    /// The bounds outside which the gradient is stopped: it passes unless `y <= lo` or
    /// `y >= hi`, compared without branches in the hot loops (a `match` or a short-circuit `&&`
    /// per element keeps them from vectorising, and the branches mispredict on activations of
    /// random sign). NaN stands for "no bound", and a NaN `y` passes, so a blow-up propagates
    /// as it does through the unfused layers. At exactly 0, ReLU's gradient is 0 here, as in
    /// TensorFlow (candle's own `relu` passes it there).
    #[inline(always)]
    pub(crate) fn gate(self) -> (f32, f32) {
        match self {
            Act::Identity => (f32::NAN, f32::NAN),
            Act::Relu => (0.0, f32::NAN),
            Act::Relu6 => (0.0, 6.0),
        }
    }
}

/// `dy` unless `y <= lo` or `y >= hi` (see [`Act::gate`]), else 0.
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord, reason = "the negated comparisons are what let NaN pass")]
pub(crate) fn gated(dy: f32, y: f32, (lo, hi): (f32, f32)) -> f32 {
    if !(y <= lo) & !(y >= hi) {
        dy
    } else {
        0.0
    }
}

/// What a fused kernel applies to each output channel: `act(z + bias[channel])`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Act,
}

impl Epilogue<'_> {
    pub(crate) fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act == Act::Identity
    }

    /// Applies the epilogue to `row`, values of output channel `channel`.
    #[inline(always)]
    pub(crate) fn apply(&self, channel: usize, row: &mut [f32]) {
        let b = self.bias.map_or(0.0, |b| b[channel]);
        match self.act {
            Act::Identity if self.bias.is_some() => row.iter_mut().for_each(|v| *v += b),
            Act::Identity => {}
            Act::Relu => row.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
            Act::Relu6 => row.iter_mut().for_each(|v| *v = (*v + b).clamp(0.0, 6.0)),
        }
    }

    /// Checks that the bias has one value per channel.
    pub(crate) fn check(&self, channels: usize, what: &str) -> Result<()> {
        match self.bias {
            Some(b) if b.len() != channels => bail!("{what}: {} bias values for {channels} output channels", b.len()),
            _ => Ok(()),
        }
    }
}

/// The gradients of a fused op's `x`, `w` and `bias` (each only if it tracks one): the
/// epilogue's backward on the output `y` and its gradient `dy`, then the kernel's own backward
/// op, `backward(want_x, want_w)`, over `(x, w, dz)`, which returns dX then dW flat.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_grads<B: CustomOp3>(
    act: Act,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
    dy: &Tensor,
    backward: impl FnOnce(bool, bool) -> B,
) -> Result<[Option<Tensor>; 3]> {
    let (want_x, want_w) = (x.track_op(), w.track_op());
    let want_b = bias.is_some_and(|b| b.track_op());
    if !want_x && !want_w && !want_b {
        return Ok([None, None, None]);
    }
    let (dz, db) = self::backward(act, y, dy, want_b)?;
    if !want_x && !want_w {
        return Ok([None, None, db]);
    }
    let flat = x.apply_op3_no_bwd(w, &dz, &backward(want_x, want_w))?;
    let (dx, dw) = super::split_grads(flat, want_x.then_some(x), want_w.then_some(w))?;
    Ok([dx, dw, db])
}

/// The gradients of a fused op's pre-epilogue output `z` and of its bias, from its output `y`
/// and the output's gradient `dy` (both `[n, c, h, w]`): `dz = dy` where the activation passes,
/// else 0, and `dbias[c] = sum of dz over n, h, w`, computed only when `want_bias`.
pub(crate) fn backward(act: Act, y: &Tensor, dy: &Tensor, want_bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let dz = if act == Act::Identity {
        dy
    } else {
        let y = y.contiguous()?;
        let gate = act.gate();
        let dz = super::with_f32(&y, |y| super::with_f32(&dy, |dy| super::par_map(y, dy, |y, g| gated(g, y, gate))))??;
        Tensor::from_vec(dz, y.shape(), y.device())?
    };
    let dbias = if want_bias {
        let (n, c, h, w) = dz.dims4()?;
        // candle sums over non-trailing axes an element at a time; these are plain plane sums.
        let sums = super::with_f32(&dz, |dz| {
            let mut sums = vec![0f64; c];
            for (i, plane) in dz.chunks_exact(h * w).enumerate() {
                sums[i % c] += plane.iter().map(|&v| v as f64).sum::<f64>();
            }
            sums
        })?;
        debug_assert_eq!(n * c * h * w, dz.elem_count());
        Some(Tensor::from_vec(sums.into_iter().map(|s| s as f32).collect::<Vec<_>>(), c, dz.device())?)
    } else {
        None
    };
    Ok((dz, dbias))
}
