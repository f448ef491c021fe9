//! Keras naming: `LAYER/WEIGHT` with our layer name minus `backbone.` (Xception's unnamed
//! shortcut layers under the names a fresh Keras session gives them), TensorFlow layouts.
//!
//! Accepted spellings per weight: Keras 2's (`depthwise_kernel` for a `DepthwiseConv2D`), Keras
//! 3's (`kernel` for it), each also with TensorFlow's `:0` suffix.

use crate::train::model::xception;
use crate::train::nn::{Layer, LayerKind};
use crate::train::weights::Layout;

/// The names our weight `weight` of `layer` may have in a Keras file, and its layout there.
pub fn names(layer: &Layer, weight: &str) -> (Vec<String>, Layout) {
    let ours = layer.name.strip_prefix("backbone.").unwrap_or(&layer.name);
    let keras_layer = xception::keras_shortcut_name(ours).unwrap_or_else(|| ours.to_string());
    let layout = match (&layer.kind, weight) {
        (LayerKind::Conv2d { .. }, "kernel") | (LayerKind::SeparableConv2d { .. }, "pointwise_kernel") => Layout::Hwio,
        (LayerKind::DepthwiseConv2d { .. } | LayerKind::SeparableConv2d { .. }, "depthwise_kernel") => {
            Layout::Depthwise
        }
        _ => Layout::Same,
    };
    let mut spellings = vec![weight.to_string()];
    if matches!(layer.kind, LayerKind::DepthwiseConv2d { .. }) && weight == "depthwise_kernel" {
        spellings.push("kernel".into());
    }
    let mut names: Vec<String> = spellings.iter().map(|w| format!("{keras_layer}/{w}")).collect();
    names.extend(spellings.iter().map(|w| format!("{keras_layer}/{w}:0")));
    (names, layout)
}
