//! The guide's lighter workflow, automatically: when a phase freezes the whole backbone, runs
//! batch norm in inference mode and has no augmentation, every image's backbone output is the
//! same in every epoch, so it is computed once (training and validation sets) and the head trains
//! on the stored features. What is stored is the output of [`Model::cacheable_prefix`]: the
//! backbone plus any parameter-free layers after it (the global pooling), so the cache holds
//! `channels` floats per image rather than a feature map. Dropout comes after and still draws a
//! fresh mask per step.

use candle_core::Tensor;

use crate::train::data::augment::Normalize;
use crate::train::data::{self, Dataset};
use crate::train::error::TrainError;
use crate::train::model::Model;
use crate::train::nn::ForwardCtx;

use crate::train::spec::{AugmentationSpec, BatchNormMode, PhaseSpec};

/// One set's stored features and labels.
#[derive(Debug)]
pub struct Cached {
    /// `[n, ...]`: the prefix output of image `i` at row `i`.
    pub features: Tensor,
    pub labels: Vec<u32>,
}

impl Cached {
    /// The features and labels of the images at `indices`, as one batch.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Vec<u32>), TrainError> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), self.features.device())?;
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok((self.features.index_select(&idx, 0)?, labels))
    }
}

/// A phase's cache: where the head starts and the stored sets.
#[derive(Debug)]
pub struct FeatureCache {
    /// Index of the first layer run on the cached features.
    pub start: usize,
    pub train: Cached,
    pub validation: Option<Cached>,
}

impl FeatureCache {
    /// Runs the frozen prefix (`..end`) once over the training and validation images.
    pub fn build(
        model: &Model,
        end: usize,
        train: &Dataset,
        validation: &Dataset,
        batch_size: usize,
        norm: Normalize,
        check: &dyn Fn() -> Result<(), TrainError>,
    ) -> Result<Self, TrainError> {
        let train = compute(model, end, train, batch_size, norm, check)?;
        let validation =
            if validation.is_empty() { None } else { Some(compute(model, end, validation, batch_size, norm, check)?) };
        Ok(Self { start: end, train, validation })
    }
}

/// Whether `phase` may train on cached features: no augmentation (the input is the same in every
/// epoch) and batch norm in inference mode (the frozen layers are a fixed function).
/// The model must also say its whole backbone is frozen ([`Model::cacheable_prefix`]).
pub fn phase_allows(phase: &PhaseSpec, augmentation: &AugmentationSpec) -> bool {
    let augments = augmentation.horizontal_flip || augmentation.rotation > 0.0;
    phase.batch_norm == BatchNormMode::Inference && !augments
}

/// Runs the first `end` layers over every image of `ds` once, in batches, without a graph.
/// `check` runs after every batch (the stop flag).
pub fn compute(
    model: &Model,
    end: usize,
    ds: &Dataset,
    batch_size: usize,
    norm: Normalize,
    check: &dyn Fn() -> Result<(), TrainError>,
) -> Result<Cached, TrainError> {
    let order: Vec<usize> = (0..ds.len()).collect();
    let mut parts = Vec::with_capacity(ds.len().div_ceil(batch_size));
    let mut labels = Vec::with_capacity(ds.len());
    data::for_each_batch(ds, &order, batch_size, None, norm, |_, batch| {
        let x = batch.tensor(&model.device)?;
        // The rng is unused with dropout off.
        let mut ctx = ForwardCtx::inference();
        parts.push(model.forward_prefix(end, &x, &mut ctx)?);
        labels.extend_from_slice(&batch.labels);
        check()
    })?;
    Ok(Cached { features: Tensor::cat(&parts, 0)?, labels })
}

/// The cached path against the plain one (and batch-norm folding with it): same seed, same
/// epochs.
#[cfg(test)]
mod tests {
    use crate::train::fit::{run_with, RunOptions};
    use crate::train::tests::{fixture, phase, same, spec, Recorder};
    use crate::train::*;

    /// (execution per phase, (train, validation) metrics per epoch, test metrics, final weights).
    type Run = (
        Vec<String>,
        Vec<(Metrics, Option<Metrics>)>,
        Option<Metrics>,
        std::collections::HashMap<String, candle_core::Tensor>,
    );

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
            let diff: f32 = (t - &cached_w[name])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
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
}
