//! Spec validation: everything that can be checked without a database or the data, each error
//! naming the JSON path of the offending field.

use crate::train::model::{self, selector_matches};
use crate::train::nn::Layer;
use crate::train::spec::{ClassWeights, JobSpec, ModelSpec, PhaseSpec, SpecError};

/// The largest input side accepted (memory for one batch grows with its square).
const MAX_SIDE: u32 = 2048;
/// The largest batch accepted.
const MAX_BATCH: usize = 4096;

/// Checks `spec` as far as possible without data: fractions, sizes, the model, and each phase.
pub fn validate(spec: &JobSpec) -> Result<(), SpecError> {
    if spec.batch_size == 0 || spec.batch_size > MAX_BATCH {
        return Err(SpecError::new("batch_size", format!("must be between 1 and {MAX_BATCH}")));
    }
    if spec.log_every_steps == 0 {
        return Err(SpecError::new("log_every_steps", "must be at least 1"));
    }
    let split = &spec.split;
    for (field, v) in [("split.validation", split.validation), ("split.test", split.test)] {
        if !(v.is_finite() && (0.0..1.0).contains(&v)) {
            return Err(SpecError::new(field, "must be in [0, 1)"));
        }
    }
    let held_out = split.test + if spec.validation_dataset_id.is_some() { 0.0 } else { split.validation };
    if held_out >= 1.0 {
        return Err(SpecError::new("split.validation", "validation and test fractions leave no training set"));
    }
    let input = &spec.input;
    for (field, v) in [("input.height", input.height), ("input.width", input.width)] {
        if v > MAX_SIDE {
            return Err(SpecError::new(field, format!("must be at most {MAX_SIDE}")));
        }
    }
    if !(input.scale.is_none_or(f32::is_finite) && input.offset.is_none_or(f32::is_finite)) {
        return Err(SpecError::new("input.scale", "scale and offset must be finite"));
    }
    match (input.mean, input.std) {
        (Some(_), None) => return Err(SpecError::new("input.std", "mean needs std")),
        (None, Some(_)) => return Err(SpecError::new("input.mean", "std needs mean")),
        (Some(mean), Some(std)) => {
            if let Some(i) = mean.iter().position(|m| !m.is_finite()) {
                return Err(SpecError::new(format!("input.mean[{i}]"), "must be finite"));
            }
            if let Some(i) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(SpecError::new(format!("input.std[{i}]"), "must be finite and > 0"));
            }
        }
        (None, None) => {}
    }
    if let Some(ClassWeights::PerClass(map)) = &spec.class_weights {
        if let Some((class, _)) = map.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            return Err(SpecError::new(format!("class_weights.{class}"), "must be finite and > 0"));
        }
    }
    let rotation = spec.augmentation.rotation;
    if !(rotation.is_finite() && (0.0..=1.0).contains(&rotation)) {
        return Err(SpecError::new("augmentation.rotation", "must be in [0, 1]"));
    }
    let layers = model::plan(&spec.model, input)?;
    if spec.phases.is_empty() {
        return Err(SpecError::new("phases", "needs at least one phase"));
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        validate_phase(phase, &spec.model, &layers, &format!("phases[{i}]"))?;
    }
    Ok(())
}

/// Checks one phase of a job on `model` (whose layers are `layers`); errors name `at.<field>`.
pub fn validate_phase(phase: &PhaseSpec, model: &ModelSpec, layers: &[Layer], at: &str) -> Result<(), SpecError> {
    if phase.epochs == 0 {
        return Err(SpecError::new(format!("{at}.epochs"), "must be at least 1"));
    }
    if let Some(n) = phase.unfreeze_top_blocks {
        let blocks = model::blocks(model).len();
        if n == 0 || n > blocks {
            return Err(SpecError::new(
                format!("{at}.unfreeze_top_blocks"),
                format!("must be between 1 and {blocks} (the backbone's blocks)"),
            ));
        }
    }
    if phase.trainable.is_empty() && phase.unfreeze_top_blocks.is_none() {
        return Err(SpecError::new(format!("{at}.trainable"), "makes nothing trainable"));
    }
    for (j, sel) in phase.trainable.iter().enumerate() {
        if !layers.iter().any(|l| selector_matches(sel, &l.name)) {
            return Err(SpecError::new(format!("{at}.trainable[{j}]"), format!("`{sel}` matches no layer")));
        }
    }
    let selectors = model::phase_selectors(model, phase);
    let trains_something =
        layers.iter().any(|l| selectors.iter().any(|s| selector_matches(s, &l.name)) && l.kind.param_count() > 0);
    if !trains_something {
        return Err(SpecError::new(format!("{at}.trainable"), "selects only layers without weights"));
    }
    let opt = &phase.optimizer;
    let at_opt = format!("{at}.optimizer");
    if !(opt.learning_rate.is_finite() && opt.learning_rate > 0.0) {
        return Err(SpecError::new(format!("{at_opt}.learning_rate"), "must be finite and > 0"));
    }
    for (sel, &rate) in opt.learning_rates.iter().flatten() {
        let field = format!("{at_opt}.learning_rates.{sel}");
        if !(rate.is_finite() && rate > 0.0) {
            return Err(SpecError::new(field, "must be finite and > 0"));
        }
        if !layers.iter().any(|l| selector_matches(sel, &l.name)) {
            return Err(SpecError::new(field, format!("`{sel}` matches no layer")));
        }
    }
    for (name, v) in [("beta1", opt.beta1), ("beta2", opt.beta2), ("momentum", opt.momentum)] {
        if let Some(v) = v {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                return Err(SpecError::new(format!("{at_opt}.{name}"), "must be in [0, 1)"));
            }
        }
    }
    if let Some(eps) = opt.epsilon {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(SpecError::new(format!("{at_opt}.epsilon"), "must be finite and > 0"));
        }
    }
    if let Some(es) = &phase.early_stopping {
        if !es.min_delta.is_finite() || es.min_delta < 0.0 {
            return Err(SpecError::new(format!("{at}.early_stopping.min_delta"), "must be finite and >= 0"));
        }
    }
    if let Some(rl) = &phase.reduce_lr_on_plateau {
        let at = format!("{at}.reduce_lr_on_plateau");
        if !(rl.factor.is_finite() && rl.factor > 0.0 && rl.factor < 1.0) {
            return Err(SpecError::new(format!("{at}.factor"), "must be in (0, 1)"));
        }
        if !rl.min_delta.is_finite() || rl.min_delta < 0.0 {
            return Err(SpecError::new(format!("{at}.min_delta"), "must be finite and >= 0"));
        }
        if !rl.min_lr.is_finite() || rl.min_lr < 0.0 {
            return Err(SpecError::new(format!("{at}.min_lr"), "must be finite and >= 0"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::selector_matches;
    use crate::train::spec::*;

    fn valid() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "dataset_id": "d",
            "input": {"height": 32, "width": 32},
            "model": {"backbone": {"architecture": "small_cnn", "widths": [4, 8, 16]}},
            "phases": [
                {"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 2},
                {"name": "fine", "trainable": ["all"], "optimizer": {"type": "sgd", "learning_rate": 0.0001}, "epochs": 1,
                 "early_stopping": {"patience": 1}, "reduce_lr_on_plateau": {"factor": 0.5}}
            ]
        }))
        .unwrap()
    }

    fn field_of(edit: impl FnOnce(&mut JobSpec)) -> String {
        let mut s = valid();
        edit(&mut s);
        validate(&s).expect_err("should be invalid").field
    }

    #[test]
    fn a_valid_spec_passes() {
        validate(&valid()).unwrap();
    }

    #[test]
    fn selectors_match_at_dot_boundaries() {
        assert!(selector_matches("backbone.block3", "backbone.block3.conv"));
        assert!(selector_matches("backbone.block3", "backbone.block3"));
        assert!(!selector_matches("backbone.block3", "backbone.block30.conv"));
        assert!(selector_matches("all", "head.dense"));
        assert!(!selector_matches("head", "headless.dense"));
    }

    #[test]
    fn errors_name_the_offending_field() {
        assert_eq!(field_of(|s| s.phases[0].trainable = vec!["backbone.block9".into()]), "phases[0].trainable[0]");
        assert_eq!(
            field_of(|s| s.phases[1].trainable = vec!["head".into(), "backbone.block1.convx".into()]),
            "phases[1].trainable[1]"
        );
        assert_eq!(field_of(|s| s.phases[0].trainable.clear()), "phases[0].trainable");
        assert_eq!(field_of(|s| s.phases[0].trainable = vec!["head.pool".into()]), "phases[0].trainable");
        assert_eq!(field_of(|s| s.phases[1].optimizer.learning_rate = 0.0), "phases[1].optimizer.learning_rate");
        assert_eq!(field_of(|s| s.phases[1].optimizer.learning_rate = f64::NAN), "phases[1].optimizer.learning_rate");
        assert_eq!(field_of(|s| s.phases[0].epochs = 0), "phases[0].epochs");
        assert_eq!(field_of(|s| s.phases.clear()), "phases");
        assert_eq!(field_of(|s| s.batch_size = 0), "batch_size");
        assert_eq!(field_of(|s| s.split.validation = 1.0), "split.validation");
        assert_eq!(field_of(|s| s.split.test = -0.1), "split.test");
        assert_eq!(field_of(|s| (s.split.validation, s.split.test) = (0.5, 0.5)), "split.validation");
        assert_eq!(field_of(|s| s.input.height = 2), "input.height");
        assert_eq!(field_of(|s| s.input.width = 3), "input.width");
        assert_eq!(field_of(|s| s.model.head.dropout = 1.0), "model.head.dropout");
        assert_eq!(field_of(|s| s.model.head.units = 0), "model.head.units");
        assert_eq!(field_of(|s| s.augmentation.rotation = f32::INFINITY), "augmentation.rotation");
        assert_eq!(field_of(|s| s.augmentation.rotation = 1.5), "augmentation.rotation");
        assert_eq!(field_of(|s| s.input.mean = Some([0.5; 3])), "input.std");
        assert_eq!(field_of(|s| s.input.std = Some([0.5; 3])), "input.mean");
        assert_eq!(field_of(|s| (s.input.mean, s.input.std) = (Some([0.5; 3]), Some([0.2, 0.0, 0.2]))), "input.std[1]");
        assert_eq!(field_of(|s| s.model.backbone.widths = Some(vec![])), "model.backbone.widths");
        assert_eq!(
            field_of(|s| s.phases[1].reduce_lr_on_plateau.as_mut().unwrap().factor = 1.0),
            "phases[1].reduce_lr_on_plateau.factor"
        );
        assert_eq!(
            field_of(|s| s.phases[1].early_stopping.as_mut().unwrap().min_delta = -1.0),
            "phases[1].early_stopping.min_delta"
        );
    }

    #[test]
    fn a_validation_dataset_frees_the_validation_fraction() {
        let mut s = valid();
        s.validation_dataset_id = Some("v".into());
        s.split.validation = 0.9;
        s.split.test = 0.5;
        validate(&s).unwrap();
    }
}
