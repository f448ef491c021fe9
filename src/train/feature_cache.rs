//! The guide's lighter workflow, automatically: when a phase freezes the whole backbone, runs
//! batch norm in inference mode and has no augmentation, every image's backbone output is the
//! same in every epoch, so it is computed once (training and validation sets) and the head trains
//! on the stored features. What is stored is the output of [`Model::cacheable_prefix`]: the
//! backbone plus any parameter-free layers after it (the global pooling), so the cache holds
//! `channels` floats per image rather than a feature map. Dropout comes after and still draws a
//! fresh mask per step.

use candle_core::Tensor;

use super::data::augment::Normalize;
use super::data::{self, Dataset};
use super::job::TrainError;
use super::layers::ForwardCtx;
use super::model::Model;
use super::rng::{self, Stream};
use super::spec::{AugmentationSpec, BatchNormMode, PhaseSpec};

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

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
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
        let mut ctx = ForwardCtx { dropout: false, bn_training: false, grad: false, rng: rng::rng(0, Stream::Dropout, 0, 0, 0) };
        parts.push(model.forward_prefix(end, &x, &mut ctx)?);
        labels.extend_from_slice(&batch.labels);
        check()
    })?;
    Ok(Cached { features: Tensor::cat(&parts, 0)?, labels })
}
