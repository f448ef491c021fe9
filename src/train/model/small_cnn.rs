//! `small_cnn`: the built-in backbone, a few conv3x3 → batch norm → ReLU → max-pool blocks.
//!
//! Block `i` (1-based) is `backbone.block{i}` with layers `conv`, `bn`, `relu` and `pool`. The
//! conv has no bias because batch norm follows (its beta is the bias). Pooling halves the
//! spatial size and is left out of a block once that would take a side below 2.

use crate::train::nn::Pad;
use crate::train::nn::{Layer, LayerKind, BN_EPSILON};
use crate::train::spec::SpecError;

/// Channel widths when the spec names none.
pub const DEFAULT_WIDTHS: [usize; 3] = [16, 32, 64];

/// The smallest input side: one 2x2 pooling must fit.
pub const MIN_SIDE: u32 = 4;

/// The backbone's layers for an RGB `height` x `width` input. Errors name the spec field.
pub fn layers(widths: Option<&[usize]>, height: u32, width: u32) -> Result<Vec<Layer>, SpecError> {
    let widths = widths.unwrap_or(&DEFAULT_WIDTHS);
    if widths.is_empty() {
        return Err(SpecError::new("model.backbone.widths", "needs at least one block"));
    }
    if let Some(i) = widths.iter().position(|&w| w == 0 || w > 4096) {
        return Err(SpecError::new(format!("model.backbone.widths[{i}]"), "must be between 1 and 4096"));
    }
    if height < MIN_SIDE {
        return Err(SpecError::new("input.height", format!("small_cnn needs at least {MIN_SIDE} pixels")));
    }
    if width < MIN_SIDE {
        return Err(SpecError::new("input.width", format!("small_cnn needs at least {MIN_SIDE} pixels")));
    }
    let (mut h, mut w, mut c) = (height as usize, width as usize, 3usize);
    let mut out = Vec::new();
    for (i, &width_i) in widths.iter().enumerate() {
        let block = format!("backbone.block{}", i + 1);
        let layer = |name: &str, kind, shape: Vec<usize>| Layer::new(format!("{block}.{name}"), kind, shape);
        out.push(layer(
            "conv",
            LayerKind::Conv2d {
                in_channels: c,
                out_channels: width_i,
                kernel: 3,
                stride: 1,
                padding: Pad::uniform(1),
                bias: false,
            },
            vec![h, w, width_i],
        ));
        c = width_i;
        out.push(layer("bn", LayerKind::BatchNorm { channels: c, epsilon: BN_EPSILON }, vec![h, w, c]));
        out.push(layer("relu", LayerKind::Relu, vec![h, w, c]));
        if h / 2 >= 2 && w / 2 >= 2 {
            h /= 2;
            w /= 2;
            out.push(layer("pool", LayerKind::MaxPool { size: 2 }, vec![h, w, c]));
        }
    }
    Ok(out)
}
