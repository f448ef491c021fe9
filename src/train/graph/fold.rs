//! Batch-norm folding for frozen conv → BN pairs.
//!
//! In inference mode a batch norm is a per-channel affine map, `y = x * s + t` with
//! `s = gamma / sqrt(var + eps)` and `t = beta - mean * s`; after a convolution it can be folded
//! into the convolution's kernel (`kernel * s` per output channel) and bias (`bias * s + t`),
//! which saves a full pass over the activation per pair. This is only valid while neither layer
//! trains and the statistics do not move, so it is computed at the start of a phase that runs
//! batch norm in inference mode, for that phase only. The folded tensors live beside the
//! [`ParamStore`], never in it: checkpoints keep the original weights and moving statistics.

use std::collections::{HashMap, HashSet};

use crate::train::error::TrainError;
use crate::train::nn::{Folded, Layer, LayerKind, ParamStore};

/// The folds of one phase: convolutions to run with [`Folded`] tensors, and the batch norms
/// that then become the identity.
#[derive(Debug, Default)]
pub struct Folding {
    pub convs: HashMap<String, Folded>,
    pub batch_norms: HashSet<String>,
}

/// The kernel a batch norm after this layer scales, if the layer is a convolution.
fn folded_weight(kind: &LayerKind) -> Option<(&'static str, bool)> {
    match *kind {
        LayerKind::Conv2d { bias, .. } => Some(("kernel", bias)),
        LayerKind::DepthwiseConv2d { bias, .. } => Some(("depthwise_kernel", bias)),
        LayerKind::SeparableConv2d { bias, .. } => Some(("pointwise_kernel", bias)),
        _ => None,
    }
}

/// Folds every conv → BN pair where both layers are frozen, the BN takes the convolution's
/// output directly and nothing else reads the convolution's own (unnormalised) output.
pub fn plan(layers: &[Layer], params: &ParamStore) -> Result<Folding, TrainError> {
    plan_where(layers, params, |layer| params.iter().filter(|p| p.layer == layer).all(|p| !p.trainable()))
}

/// Folds every such pair, trainable or not, from the current weights: for a forward pass that
/// builds no graph (evaluation, prediction), where no gradient has to reach the original
/// kernel. TensorFlow's graph optimiser does the same to a Keras model called with
/// `training=False`.
pub fn plan_inference(layers: &[Layer], params: &ParamStore) -> Result<Folding, TrainError> {
    plan_where(layers, params, |_| true)
}

fn plan_where(layers: &[Layer], params: &ParamStore, frozen: impl Fn(&str) -> bool) -> Result<Folding, TrainError> {
    let referenced: HashSet<&str> = layers.iter().flat_map(|l| l.inputs.iter().map(String::as_str)).collect();
    let mut folding = Folding::default();
    for pair in layers.windows(2) {
        let (conv, bn) = (&pair[0], &pair[1]);
        let (Some((weight, has_bias)), LayerKind::BatchNorm { channels, epsilon }) =
            (folded_weight(&conv.kind), &bn.kind)
        else {
            continue;
        };
        if !bn.inputs.is_empty() || referenced.contains(conv.name.as_str()) || !frozen(&conv.name) || !frozen(&bn.name)
        {
            continue;
        }
        let get = |layer: &str, w: &str| params.tensor(layer, w, false);
        let (gamma, beta) = (get(&bn.name, "gamma")?, get(&bn.name, "beta")?);
        let (mean, var) = (get(&bn.name, "moving_mean")?, get(&bn.name, "moving_variance")?);
        let scale = gamma.div(&(var + *epsilon)?.sqrt()?)?; // [c]
        let shift = beta.sub(&mean.mul(&scale)?)?;
        let kernel = get(&conv.name, weight)?;
        let kernel = kernel.broadcast_mul(&scale.reshape((*channels, 1, 1, 1))?)?;
        let bias = if has_bias { get(&conv.name, "bias")?.mul(&scale)?.add(&shift)? } else { shift };
        folding.convs.insert(conv.name.clone(), Folded { weight, kernel, bias });
        folding.batch_norms.insert(bn.name.clone());
    }
    Ok(folding)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use crate::train::model::Model;
    use crate::train::nn::ForwardCtx;
    use crate::train::rng::{self, Stream};
    use crate::train::spec::*;

    fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn folded_forward_matches_and_params_stay_unfolded() {
        let spec = ModelSpec {
            backbone: BackboneSpec {
                architecture: Architecture::MobilenetV2,
                weights: None,
                alpha: Some(0.35),
                widths: None,
            },
            head: HeadSpec::default(),
        };
        let input = InputSpec { height: 32, width: 32, ..InputSpec::default() };
        let mut model = Model::new(&spec, &input, 3).unwrap();
        // Non-trivial statistics, so a wrong fold shows.
        for p in model.params.iter().filter(|p| p.name.ends_with("moving_mean") || p.name.ends_with("moving_variance"))
        {
            let n = p.elem_count();
            let t = candle_core::Tensor::rand(0.5f32, 1.5, n, &Device::Cpu).unwrap();
            p.var.set(&t).unwrap();
        }
        model.set_trainable(&["head".to_string(), "backbone.block_16".to_string()]);
        let before = model.params.snapshot().unwrap();
        let x = candle_core::Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let ctx = || ForwardCtx::new(false, false, false, rng::rng(0, Stream::Dropout, 0, 0, 0));
        let plain = model.forward(&x, &mut ctx()).unwrap();
        let folds = model.fold_frozen_batch_norms().unwrap();
        assert!(folds > 30, "{folds} folds");
        assert!(model.folding.convs.keys().all(|k| !k.starts_with("backbone.block_16")));
        let folded = model.forward(&x, &mut ctx()).unwrap();
        assert!(max_diff(&plain, &folded) < 1e-4, "{}", max_diff(&plain, &folded));
        // Training-mode batch norm ignores the fold.
        let training = ForwardCtx { bn_training: true, ..ctx() };
        assert!(model.forward(&x, &mut { training }).is_ok());
        model.unfold();
        let after = model.params.snapshot().unwrap();
        for (name, t) in &before {
            if !name.contains("moving_") {
                assert_eq!(max_diff(t, &after[name]), 0.0, "{name}");
            }
        }
    }
}
