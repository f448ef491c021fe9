//! torchvision naming for MobileNetV2 (`torchvision.models.mobilenet_v2`): module paths
//! `features.N...` and `classifier.1`, PyTorch layouts (OIHW, which is ours; a linear layer is
//! `[out, in]`, the transpose of our dense kernel).
//!
//! Our layer → torchvision module: `Conv1` → `features.0.0`, `bn_Conv1` → `features.0.1`;
//! block 0 (`expanded_conv_*`) → `features.1.conv.{0.0, 0.1, 1, 2}` for depthwise, its BN,
//! project, its BN; block n ≥ 1 → `features.{n+1}.conv.{0.0, 0.1, 1.0, 1.1, 2, 3}` for expand,
//! BN, depthwise, BN, project, BN; `Conv_1` → `features.18.0`, `Conv_1_bn` → `features.18.1`;
//! `head.dense` → `classifier.1` (only when asked for, e.g. an ImageNet check).

use crate::train::error::WeightsError;
use crate::train::nn::{Layer, LayerKind};
use crate::train::spec::{Architecture, ModelSpec};
use crate::train::weights::Layout;

/// torchvision's module path of one of our MobileNetV2 layers (without `backbone.`).
fn module(layer: &str) -> Option<String> {
    let fixed = match layer {
        "Conv1" => Some("features.0.0"),
        "bn_Conv1" => Some("features.0.1"),
        "expanded_conv_depthwise" => Some("features.1.conv.0.0"),
        "expanded_conv_depthwise_BN" => Some("features.1.conv.0.1"),
        "expanded_conv_project" => Some("features.1.conv.1"),
        "expanded_conv_project_BN" => Some("features.1.conv.2"),
        "Conv_1" => Some("features.18.0"),
        "Conv_1_bn" => Some("features.18.1"),
        "head.dense" => Some("classifier.1"),
        _ => None,
    };
    if let Some(m) = fixed {
        return Some(m.to_string());
    }
    let rest = layer.strip_prefix("block_")?;
    let (n, part) = rest.split_once('_')?;
    let n: usize = n.parse().ok()?;
    let sub = match part {
        "expand" => "0.0",
        "expand_BN" => "0.1",
        "depthwise" => "1.0",
        "depthwise_BN" => "1.1",
        "project" => "2",
        "project_BN" => "3",
        _ => return None,
    };
    Some(format!("features.{}.conv.{sub}", n + 1))
}

/// The name our weight `weight` of `layer` has in a torchvision file, and its layout there.
pub fn names(model: &ModelSpec, layer: &Layer, weight: &str) -> Result<(Vec<String>, Layout), WeightsError> {
    if model.backbone.architecture != Architecture::MobilenetV2 {
        return Err(WeightsError::Unsupported(format!(
            "torchvision weights are supported for mobilenet_v2 only, not {:?}",
            model.backbone.architecture
        )));
    }
    let ours = layer.name.strip_prefix("backbone.").unwrap_or(&layer.name);
    let m = module(ours)
        .ok_or_else(|| WeightsError::Unsupported(format!("no torchvision counterpart for layer {}", layer.name)))?;
    let (w, layout) = parameter(layer, weight)?;
    Ok((vec![format!("{m}.{w}")], layout))
}

/// The PyTorch name of our weight `weight` of `layer` within its module, and its layout there:
/// `kernel`/`gamma` → `weight`, `beta` → `bias`, batch norm's moving statistics → `running_*`.
pub fn parameter(layer: &Layer, weight: &str) -> Result<(&'static str, Layout), WeightsError> {
    Ok(match (&layer.kind, weight) {
        (LayerKind::Dense { .. }, "kernel") => ("weight", Layout::Transposed),
        (_, "kernel" | "depthwise_kernel" | "gamma") => ("weight", Layout::Same),
        (_, "beta" | "bias") => ("bias", Layout::Same),
        (_, "moving_mean") => ("running_mean", Layout::Same),
        (_, "moving_variance") => ("running_var", Layout::Same),
        (_, other) => {
            return Err(WeightsError::Unsupported(format!("no PyTorch counterpart for {}.{other}", layer.name)))
        }
    })
}
