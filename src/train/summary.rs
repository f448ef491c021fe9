//! `model.summary(show_trainable=True)` as data, computed from the layer plan (no tensors):
//! per layer its Keras class, channels-last output shape, parameter count and trainability per
//! phase; totals per phase. Batch-norm moving statistics count in the total and are always
//! non-trainable.

use super::job::{LayerSummary, ModelSummary, PhaseParams};
use super::model::{self, selector_matches};
use super::params::Role;
use super::spec::{InputSpec, ModelSpec, PhaseSpec, SpecError};

/// The summary of `model` at `input` under each of `phases`.
pub fn summarize(model: &ModelSpec, input: &InputSpec, phases: &[PhaseSpec]) -> Result<ModelSummary, SpecError> {
    let layers = model::plan(model, input)?;
    let selected = |phase: &PhaseSpec, name: &str| phase.trainable.iter().any(|s| selector_matches(s, name));
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
        let trainable: Vec<bool> = phases.iter().map(|p| selected(p, &layer.name)).collect();
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
