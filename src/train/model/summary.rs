//! `model.summary(show_trainable=True)` as data, computed from the layer plan (no tensors):
//! per layer its Keras class, channels-last output shape, parameter count and trainability per
//! phase; totals per phase. Batch-norm moving statistics count in the total and are always
//! non-trainable.

use crate::train::job::{LayerSummary, ModelSummary, PhaseParams};
use crate::train::model::{self, selector_matches};
use crate::train::nn::Role;
use crate::train::spec::{InputSpec, ModelSpec, PhaseSpec, SpecError};

/// The summary of `model` at `input` under each of `phases`.
pub fn summarize(model: &ModelSpec, input: &InputSpec, phases: &[PhaseSpec]) -> Result<ModelSummary, SpecError> {
    let layers = model::plan(model, input)?;
    let selectors: Vec<Vec<String>> = phases.iter().map(|p| model::phase_selectors(model, p)).collect();
    let selected = |k: usize, name: &str| selectors[k].iter().any(|s| selector_matches(s, name));
    let mut total_params = 0;
    let mut trainable_params = vec![0usize; phases.len()];
    let mut out = Vec::with_capacity(layers.len());
    for layer in &layers {
        let weights = layer.kind.weights();
        let count = |role: Option<Role>| -> usize {
            weights.iter().filter(|w| role.is_none_or(|r| w.role == r)).map(|w| w.shape.iter().product::<usize>()).sum()
        };
        let params = count(None);
        total_params += params;
        let trainable: Vec<bool> = (0..phases.len()).map(|k| selected(k, &layer.name)).collect();
        for (k, &t) in trainable.iter().enumerate() {
            if t {
                trainable_params[k] += count(Some(Role::Weight));
            }
        }
        out.push(LayerSummary {
            name: layer.name.clone(),
            kind: layer.kind.keras_class().to_string(),
            output_shape: layer.output_shape.clone(),
            params,
            trainable,
        });
    }
    let phases = phases
        .iter()
        .zip(trainable_params)
        .map(|(p, t)| PhaseParams { name: p.name.clone(), trainable_params: t, non_trainable_params: total_params - t })
        .collect();
    Ok(ModelSummary { layers: out, total_params, phases })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::spec::*;

    fn model(widths: Vec<usize>, units: usize) -> ModelSpec {
        ModelSpec {
            backbone: BackboneSpec {
                architecture: Architecture::SmallCnn,
                weights: None,
                alpha: None,
                widths: Some(widths),
            },
            head: HeadSpec { units, ..HeadSpec::default() },
        }
    }

    fn phase(trainable: &[&str]) -> PhaseSpec {
        PhaseSpec {
            name: trainable.join("+"),
            trainable: trainable.iter().map(|s| s.to_string()).collect(),
            optimizer: OptimizerSpec {
                kind: OptimizerKind::Sgd,
                learning_rate: 0.1,
                learning_rates: None,
                beta1: None,
                beta2: None,
                epsilon: None,
                momentum: None,
            },
            epochs: 1,
            batch_norm: BatchNormMode::Inference,
            early_stopping: None,
            reduce_lr_on_plateau: None,
            on_divergence: Default::default(),
            unfreeze_top_blocks: None,
        }
    }

    #[test]
    fn counts_follow_keras_trainability() {
        let input = InputSpec { height: 16, width: 16, ..InputSpec::default() };
        let phases = [phase(&["head"]), phase(&["all"]), phase(&["backbone.block2"]), phase(&["backbone"])];
        let s = summarize(&model(vec![4, 8], 1), &input, &phases).unwrap();
        let layer = |n: &str| s.layers.iter().find(|l| l.name == n).unwrap();
        // conv 3x3x3x4 (no bias), bn 4*4, conv 3x3x4x8, bn 4*8, dense 8+1.
        assert_eq!(layer("backbone.block1.conv").params, 108);
        assert_eq!(layer("backbone.block1.bn").params, 16);
        assert_eq!(layer("backbone.block1.bn").kind, "BatchNormalization");
        assert_eq!(layer("head.dense").params, 9);
        assert_eq!(layer("backbone.block1.pool").output_shape, vec![8, 8, 4]);
        assert_eq!(layer("backbone.block2.pool").output_shape, vec![4, 4, 8]);
        assert_eq!(layer("head.pool").output_shape, vec![8]);
        assert_eq!(layer("head.dense").output_shape, vec![1]);
        let total = 108 + 16 + 288 + 32 + 9;
        assert_eq!(s.total_params, total);
        assert_eq!(s.layers.iter().map(|l| l.params).sum::<usize>(), total);
        // Head only: the dense layer's 2 weights; the whole backbone sub-model is frozen.
        assert_eq!(s.phases[0].trainable_params, 9);
        // Everything: all but the BN moving statistics (2 of BN's 4 weights per channel).
        assert_eq!(s.phases[1].trainable_params, total - 2 * 4 - 2 * 8);
        assert_eq!(s.phases[2].trainable_params, 288 + 2 * 8);
        assert_eq!(s.phases[3].trainable_params, 108 + 8 + 288 + 16);
        for p in &s.phases {
            assert_eq!(p.trainable_params + p.non_trainable_params, total);
        }
        assert_eq!(layer("backbone.block2.bn").trainable, vec![false, true, true, true]);
        assert_eq!(layer("head.dense").trainable, vec![true, true, false, false]);
    }

    #[test]
    fn pooling_stops_before_a_side_drops_below_two() {
        let input = InputSpec { height: 8, width: 8, ..InputSpec::default() };
        let s = summarize(&model(vec![2, 2, 2], 1), &input, &[]).unwrap();
        let pools: Vec<_> =
            s.layers.iter().filter(|l| l.kind == "MaxPooling2D").map(|l| l.output_shape.clone()).collect();
        assert_eq!(pools, vec![vec![4, 4, 2], vec![2, 2, 2]]);
    }

    #[test]
    fn store_counts_match_the_summary() {
        use crate::train::model::Model;
        let input = InputSpec { height: 16, width: 16, ..InputSpec::default() };
        let spec = model(vec![4, 8], 1);
        let mut m = Model::new(&spec, &input, 1).unwrap();
        let s = summarize(&spec, &input, &[phase(&["backbone.block1"])]).unwrap();
        m.set_trainable(&["backbone.block1".to_string()]);
        assert_eq!(m.params.counts(), (s.phases[0].trainable_params, s.phases[0].non_trainable_params));
        let bn: Vec<_> = m
            .params
            .iter()
            .filter(|p| p.layer == "backbone.block1.bn")
            .map(|p| (p.name.clone(), p.trainable()))
            .collect();
        assert_eq!(
            bn,
            [
                ("backbone.block1.bn.gamma".to_string(), true),
                ("backbone.block1.bn.beta".to_string(), true),
                ("backbone.block1.bn.moving_mean".to_string(), false),
                ("backbone.block1.bn.moving_variance".to_string(), false),
            ]
        );
        assert_eq!(m.execution(), "partial_backward");
    }
}
