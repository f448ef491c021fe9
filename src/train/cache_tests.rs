//! The feature cache and batch-norm folding against the plain path: same seed, same epochs.

use super::fit::{run_with, RunOptions};
use super::tests::{fixture, phase, same, spec, Recorder};
use super::*;

/// (execution per phase, (train, validation) metrics per epoch, test metrics, final weights).
type Run = (Vec<String>, Vec<(Metrics, Option<Metrics>)>, Option<Metrics>, std::collections::HashMap<String, candle_core::Tensor>);

fn run_both(spec: &JobSpec, feature_cache: bool) -> Run {
    let f = fixture(8);
    let mut rec = Recorder::default();
    let job = f.job(spec.clone(), "run");
    let out = run_with(&job, &Control::new(), &mut rec, RunOptions { feature_cache }).unwrap();
    let mut executions = Vec::new();
    let mut epochs = Vec::new();
    for e in &rec.events {
        match e {
            TrainEvent::PhaseStarted { execution, .. } => executions.push(execution.clone()),
            TrainEvent::EpochEnded { train, validation, .. } => epochs.push((*train, *validation)),
            _ => {}
        }
    }
    (executions, epochs, out.test, load_weights(&out.weights.unwrap().path).unwrap())
}

fn close(a: &Metrics, b: &Metrics) {
    assert!((a.loss - b.loss).abs() < 1e-4 * a.loss.abs().max(1.0), "loss {} vs {}", a.loss, b.loss);
    assert_eq!(a.accuracy, b.accuracy);
}

#[test]
fn cached_head_phase_matches_the_backbone_forward_path() {
    let mut s = spec(vec![phase("head", &["head"], 0.05, 3), phase("fine_tune", &["all"], 1e-3, 1)]);
    s.augmentation = AugmentationSpec::default();
    s.split.test = 0.2;
    let (cached_exec, cached, cached_test, cached_w) = run_both(&s, true);
    let (plain_exec, plain, plain_test, plain_w) = run_both(&s, false);
    assert_eq!(cached_exec, ["feature_cache", "full_backward"]);
    assert_eq!(plain_exec, ["backbone_forward", "full_backward"]);
    assert_eq!(cached.len(), 4);
    for ((ct, cv), (pt, pv)) in cached.iter().zip(&plain) {
        close(ct, pt);
        close(cv.as_ref().unwrap(), pv.as_ref().unwrap());
    }
    close(&cached_test.unwrap(), &plain_test.unwrap());
    // The fine-tune phase started from the real (unfolded) weights in both runs.
    for (name, t) in &plain_w {
        let diff: f32 = (t - &cached_w[name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        assert!(diff < 1e-3, "{name}: {diff}");
    }
}

#[test]
fn augmentation_or_training_batch_norm_runs_the_backbone() {
    let mut s = spec(vec![phase("head", &["head"], 0.05, 1)]);
    let (exec, ..) = run_both(&s, true);
    assert_eq!(exec, ["backbone_forward"], "augmentation makes every epoch's input different");
    s.augmentation = AugmentationSpec::default();
    s.phases[0].batch_norm = BatchNormMode::Training;
    let (exec, _, _, w) = run_both(&s, true);
    assert_eq!(exec, ["backbone_forward"], "training-mode batch norm moves its statistics");
    let fresh = model::Model::new(&s.model, &s.input, s.seed).unwrap().params.snapshot().unwrap();
    assert!(!same(&fresh["backbone.block1.bn.moving_mean"], &w["backbone.block1.bn.moving_mean"]));
}
