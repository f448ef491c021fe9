//! Which consecutive layers run as one kernel call.
//!
//! Run one by one, `ZeroPadding2D → DepthwiseConv2D → BatchNormalization → ReLU(6)` makes four
//! full passes over the activation (and four allocations of it). The kernels take explicit
//! padding and apply a per-channel bias and an activation to each tile as they write it
//! ([`crate::train::kernels::Act`]); with the batch norm folded into the convolution (a frozen phase,
//! [`crate::train::graph::fold`]) or computed by the fused batch-norm op, the chain is one or two passes.
//!
//! Only outputs nobody else reads are fused away: a layer inside a fused step must not be a
//! named input of a later layer (residual connections read block outputs). The last layer of a
//! step gives the step's output, which is kept under its name as usual.

use std::collections::HashSet;
use std::ops::Range;

use crate::train::graph::fold::Folding;
use crate::train::kernels::Act;
use crate::train::nn::{Fusion, Layer, LayerKind};

/// One call: `layers[layer]` with `fusion`, standing for `layers[span]`.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    pub layer: usize,
    pub fusion: Fusion<'a>,
    /// The layers this step computes (the last one names its output).
    pub span: Range<usize>,
}

/// The activation a layer applies, if it is a plain activation layer.
fn activation(kind: &LayerKind) -> Option<Act> {
    match kind {
        LayerKind::Relu => Some(Act::Relu),
        LayerKind::Relu6 => Some(Act::Relu6),
        _ => None,
    }
}

/// The steps that run `layers[range]`. `folding` is the phase's batch-norm folds when batch
/// norm runs in inference mode (`None` in training mode: no fold applies); `referenced` the
/// names some layer takes as a named input.
pub fn plan<'a>(
    layers: &[Layer],
    range: Range<usize>,
    folding: Option<&'a Folding>,
    referenced: &HashSet<&str>,
) -> Vec<Step<'a>> {
    let end = range.end;
    // Whether `layers[i]` exists in the range, takes the previous output, and may be computed
    // without keeping its own output (nobody reads it by name).
    let chained = |i: usize| i < end && layers[i].inputs.is_empty();
    let private = |i: usize| !referenced.contains(layers[i].name.as_str());
    let folded_bn = |i: usize| folding.is_some_and(|f| f.batch_norms.contains(&layers[i].name));
    let mut steps = Vec::new();
    let mut i = range.start;
    while i < end {
        let start = i;
        let mut fusion = Fusion::default();
        // ZeroPadding2D into the convolution after it, while each side stays under the kernel.
        if let LayerKind::ZeroPad(p) = layers[i].kind {
            if chained(i) && private(i) && chained(i + 1) {
                if let Some((k, own)) = layers[i + 1].kind.conv_geometry() {
                    if own.plus(p).max_side() < k {
                        fusion.pad = p;
                        i += 1;
                    }
                }
            }
        }
        let layer = i;
        let mut last = i;
        let fold = folding.and_then(|f| f.convs.get(&layers[i].name));
        let takes_act = match layers[i].kind {
            _ if layers[i].kind.conv_geometry().is_some() => {
                fusion.fold = fold;
                // The folded batch norm after it is the identity: it names this step's output.
                if fold.is_some() && chained(i + 1) && folded_bn(i + 1) && private(i) {
                    last = i + 1;
                }
                true
            }
            LayerKind::BatchNorm { .. } => !folded_bn(i),
            _ => false,
        };
        if takes_act && chained(last + 1) && private(last) {
            if let Some(act) = activation(&layers[last + 1].kind) {
                fusion.act = act;
                last += 1;
            }
        }
        steps.push(Step { layer, fusion, span: start..last + 1 });
        i = last + 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    use crate::train::kernels::Act;
    use crate::train::model::Model;
    use crate::train::nn::{ForwardCtx, LayerKind};
    use crate::train::rng::{self, Stream};
    use crate::train::spec::*;

    fn mobilenet() -> Model {
        with_statistics(Architecture::MobilenetV2, Some(0.35), 32)
    }

    fn with_statistics(architecture: Architecture, alpha: Option<f32>, side: u32) -> Model {
        let spec = ModelSpec {
            backbone: BackboneSpec { architecture, weights: None, alpha, widths: None },
            head: HeadSpec::default(),
        };
        let model = Model::new(&spec, &InputSpec { height: side, width: side, ..InputSpec::default() }, 3).unwrap();
        // Statistics and scales that make the folds and the ReLU6 clipping show.
        for p in model.params.iter() {
            let n = p.elem_count();
            let t = if p.name.ends_with("moving_variance") {
                Tensor::rand(0.5f32, 1.5, n, &Device::Cpu)
            } else if p.name.ends_with("moving_mean") || p.name.ends_with("beta") {
                Tensor::rand(-0.5f32, 0.5, n, &Device::Cpu)
            } else if p.name.ends_with("gamma") {
                Tensor::rand(1f32, 4.0, n, &Device::Cpu)
            } else {
                continue;
            };
            p.var.set(&t.unwrap()).unwrap();
        }
        model
    }

    /// Layer by layer, no fusion and no folding: the reference.
    fn unfused(model: &Model, x: &Tensor, ctx: &mut ForwardCtx) -> Tensor {
        let mut saved: HashMap<&str, Tensor> = HashMap::new();
        let mut x = x.clone();
        for layer in &model.layers {
            x = match layer.inputs.as_slice() {
                [a, b] => (&saved[a.as_str()] + &saved[b.as_str()]).unwrap(),
                [a] => layer.forward(&saved[a.as_str()], &model.params, ctx).unwrap(),
                [] => layer.forward(&x, &model.params, ctx).unwrap(),
                _ => unreachable!(),
            };
            saved.insert(layer.name.as_str(), x.clone());
        }
        x
    }

    fn ctx(bn_training: bool) -> ForwardCtx {
        ForwardCtx::new(false, bn_training, false, rng::rng(0, Stream::Dropout, 0, 0, 0))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The gradients of every trainable weight, through the fused forward and through the
    /// layer-by-layer one, from the same starting statistics.
    fn assert_same_gradients(model: &Model, bn_training: bool) {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 1), &Device::Cpu).unwrap();
        let start = model.params.snapshot().unwrap();
        let grads = |fused: bool| {
            model.params.load(&start, |_| true).unwrap();
            let mut ctx = ForwardCtx { grad: true, ..ctx(bn_training) };
            let y = if fused { model.forward(&x, &mut ctx).unwrap() } else { unfused(model, &x, &mut ctx) };
            (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let (gf, gu) = (grads(true), grads(false));
        let mut checked = 0;
        for p in model.params.iter().filter(|p| p.trainable()) {
            let (a, b) = (gf.get(p.var.as_tensor()).unwrap(), gu.get(p.var.as_tensor()).unwrap());
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
            assert!(max_diff(a, b) <= 1e-3 * scale, "{}: {} (scale {scale})", p.name, max_diff(a, b));
            checked += 1;
        }
        assert!(checked >= 8, "{checked} gradients");
    }

    #[test]
    fn fused_steps_give_the_layer_by_layer_gradients() {
        // MobileNetV2 in both batch-norm modes (conv, BN + ReLU6, padding, residual adds) and the
        // small CNN (BN + ReLU, 2x2 pools).
        let mut model = mobilenet();
        model.set_trainable(&["all".to_string()]);
        assert_same_gradients(&model, true);
        assert_same_gradients(&model, false);
        let spec = ModelSpec {
            backbone: BackboneSpec {
                architecture: Architecture::SmallCnn,
                weights: None,
                alpha: None,
                widths: Some(vec![4, 8]),
            },
            head: HeadSpec::default(),
        };
        let mut small = Model::new(&spec, &InputSpec { height: 32, width: 32, ..InputSpec::default() }, 5).unwrap();
        small.set_trainable(&["all".to_string()]);
        assert_same_gradients(&small, true);
    }

    /// The feature cache runs `forward_prefix` once and `forward_from` every step: at every point
    /// where the model can be split, the two halves give the whole forward pass.
    #[test]
    fn prefix_then_rest_is_the_whole_forward_at_every_split() {
        let mut model = mobilenet();
        model.set_trainable(&["head".to_string(), "backbone.block_16".to_string()]);
        model.fold_frozen_batch_norms().unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let whole = model.forward(&x, &mut ctx(false)).unwrap();
        let mut splits = 0;
        for k in 0..=model.layers.len() {
            let before: std::collections::HashSet<&str> = model.layers[..k].iter().map(|l| l.name.as_str()).collect();
            if model.layers[k..].iter().flat_map(|l| &l.inputs).any(|n| before.contains(n.as_str())) {
                continue;
            }
            let mid = model.forward_prefix(k, &x, &mut ctx(false)).unwrap();
            let out = model.forward_from(k, &mid, &mut ctx(false)).unwrap();
            assert!(
                max_diff(&out, &whole) < 1e-4,
                "split at {k} ({})",
                model.layers.get(k).map_or("end", |l| l.name.as_str())
            );
            splits += 1;
        }
        assert!(splits > 40, "{splits} splits");
    }

    #[test]
    fn frozen_mobilenet_blocks_run_as_one_call_per_convolution() {
        let mut model = mobilenet();
        model.set_trainable(&["head".to_string()]);
        model.fold_frozen_batch_norms().unwrap();
        let referenced = model.layers.iter().flat_map(|l| l.inputs.iter().map(String::as_str)).collect();
        let steps = super::plan(&model.layers, 0..model.layers.len(), Some(&model.folding), &referenced);
        let names = |s: &super::Step<'_>| {
            model.layers[s.span.clone()].iter().map(|l| l.name.trim_start_matches("backbone.")).collect::<Vec<_>>()
        };
        let find = |first: &str| {
            steps.iter().find(|s| names(s)[0] == first).unwrap_or_else(|| panic!("no step starts at {first}"))
        };
        assert_eq!(
            names(find("block_1_pad")),
            ["block_1_pad", "block_1_depthwise", "block_1_depthwise_BN", "block_1_depthwise_relu"]
        );
        assert_eq!(find("block_1_pad").fusion.act, Act::Relu6);
        assert_eq!(names(find("block_1_expand")), ["block_1_expand", "block_1_expand_BN", "block_1_expand_relu"]);
        // The projection's batch norm is read by the residual Add: it ends its step.
        assert_eq!(names(find("block_2_project")), ["block_2_project", "block_2_project_BN"]);
        assert!(steps.iter().all(|s| !matches!(
            model.layers[s.layer].kind,
            LayerKind::Relu6 | LayerKind::ZeroPad(_) | LayerKind::BatchNorm { .. }
        )));

        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let fused = model.forward(&x, &mut ctx(false)).unwrap();
        let reference = unfused(&model, &x, &mut ctx(false));
        let diff: f32 =
            (fused - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    /// Xception puts its activations before the separable convolutions: a folded separable
    /// convolution takes the next block's ReLU.
    #[test]
    fn frozen_xception_matches_layer_by_layer() {
        let mut model = with_statistics(Architecture::Xception, None, 71);
        model.set_trainable(&["head".to_string()]);
        model.fold_frozen_batch_norms().unwrap();
        let referenced = model.layers.iter().flat_map(|l| l.inputs.iter().map(String::as_str)).collect();
        let steps = super::plan(&model.layers, 0..model.layers.len(), Some(&model.folding), &referenced);
        let sep_relu = steps
            .iter()
            .filter(|s| {
                matches!(model.layers[s.layer].kind, LayerKind::SeparableConv2d { .. }) && s.fusion.act == Act::Relu
            })
            .count();
        assert!(sep_relu >= 20, "{sep_relu} separable convolutions took their ReLU");
        let x = Tensor::randn(0f32, 1.0, (1, 3, 71, 71), &Device::Cpu).unwrap();
        let fused = model.forward(&x, &mut ctx(false)).unwrap();
        let reference = unfused(&model, &x, &mut ctx(false));
        let diff: f32 =
            (fused - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(diff < 1e-3, "{diff}");
    }

    #[test]
    fn training_mode_fuses_batch_norm_with_its_activation_and_matches() {
        let model = mobilenet();
        let referenced = model.layers.iter().flat_map(|l| l.inputs.iter().map(String::as_str)).collect();
        let steps = super::plan(&model.layers, 0..model.layers.len(), None, &referenced);
        let bn_relu = steps
            .iter()
            .filter(|s| matches!(model.layers[s.layer].kind, LayerKind::BatchNorm { .. }) && s.fusion.act == Act::Relu6)
            .count();
        // Every ReLU6 of MobileNetV2 follows a batch norm: 1 + 16 * 2 + 1 (block 0 has no expand).
        assert_eq!(bn_relu, 35);
        assert!(steps.iter().all(|s| s.fusion.fold.is_none()));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        // Training mode moves the moving statistics: run both on copies of the same start.
        let start = model.params.snapshot().unwrap();
        let fused = model.forward(&x, &mut ctx(true)).unwrap();
        model.params.load(&start, |_| true).unwrap();
        let reference = unfused(&model, &x, &mut ctx(true));
        let diff: f32 =
            (fused - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
