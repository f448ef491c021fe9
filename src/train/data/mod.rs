//! The data pipeline: split the samples, decode them once, and serve shuffled, augmented,
//! normalised NCHW batches with the next batch prepared on another thread.
//!
//! Every random choice comes from a generator derived from `(seed, phase, epoch, batch)`, so
//! the batches are the same whatever the thread timing and wherever a resumed run starts.

pub mod augment;
pub mod decode;
pub mod feature_cache;

use std::sync::mpsc;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;

use self::augment::Normalize;
use self::decode::Image;
use crate::train::error::TrainError;
use crate::train::job::{Sample, TrainJob};
use crate::train::rng::{self, Stream};
use crate::train::spec::{AugmentationSpec, InputSpec};

/// How many prepared batches may wait for the trainer.
const PREFETCH: usize = 2;

/// The samples of each set, before decoding.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    pub train: Vec<Sample>,
    pub validation: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// Splits `job.samples` with a shuffle seeded by `spec.split.seed`: test first, then validation
/// (unless `job.validation_samples` supplies it), the rest trains. Fractions round down, as
/// Keras's `validation_split`.
pub fn split(job: &TrainJob) -> Result<Splits, TrainError> {
    let split = &job.spec.split;
    let mut samples = job.samples.clone();
    samples.shuffle(&mut rng::rng(split.seed, Stream::Split, 0, 0, 0));
    let n = samples.len();
    let n_test = (n as f64 * split.test).floor() as usize;
    let n_val = if job.validation_samples.is_some() { 0 } else { (n as f64 * split.validation).floor() as usize };
    if n_test + n_val >= n {
        return Err(TrainError::Data(format!(
            "{n} images leave none for training after holding out {n_test} for test and {n_val} for validation"
        )));
    }
    let train = samples.split_off(n_test + n_val);
    let validation_held = samples.split_off(n_test);
    let validation = job.validation_samples.clone().unwrap_or(validation_held);
    Ok(Splits { train, validation, test: samples })
}

/// Decoded images of one set at the input size.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Vec<Image>,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    /// Decodes `samples`; returns the set and how many files failed to decode.
    pub fn decode(samples: &[Sample], input: &InputSpec) -> (Self, usize) {
        let (images, skipped) = decode::decode_all(samples, input);
        (Self { images, height: input.height as usize, width: input.width as usize }, skipped)
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// A batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[n, 3, h, w]`, row-major.
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// `[n, 3, h, w]`
    pub fn tensor(&self, device: &Device) -> Result<Tensor, TrainError> {
        Ok(Tensor::from_slice(&self.pixels, (self.len(), 3, self.height, self.width), device)?)
    }
}

/// Where a batch's augmentation comes from: the spec and the seed coordinates.
#[derive(Debug, Clone, Copy)]
pub struct AugmentFor<'a> {
    pub spec: &'a AugmentationSpec,
    pub seed: u64,
    pub phase: usize,
    pub epoch: u32,
}

/// The images at `indices` as one batch; batch `batch` of the epoch when augmenting.
pub fn make_batch(ds: &Dataset, indices: &[usize], aug: Option<(AugmentFor<'_>, usize)>, norm: Normalize) -> Batch {
    let (h, w) = (ds.height, ds.width);
    let size = 3 * h * w;
    let mut pixels = vec![0f32; indices.len() * size];
    let mut rng = aug.map(|(a, batch)| (a.spec, rng::rng(a.seed, Stream::Augment, a.phase, a.epoch, batch)));
    for (slot, &i) in pixels.chunks_mut(size).zip(indices) {
        let aug = rng.as_mut().map(|(spec, rng)| (*spec, rng));
        augment::write_image(&ds.images[i].pixels, h, w, aug, norm, slot);
    }
    let labels = indices.iter().map(|&i| ds.images[i].label).collect();
    Batch { pixels, labels, height: h, width: w }
}

/// The training order of an epoch: a permutation seeded by `(seed, phase, epoch)`.
pub fn epoch_order(n: usize, seed: u64, phase: usize, epoch: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng::rng(seed, Stream::Shuffle, phase, epoch, 0));
    order
}

/// Calls `f(batch_index, batch)` for consecutive `batch_size` chunks of `order` (the last may be
/// smaller), preparing the next batches on another thread meanwhile. Stops at the first error
/// of `f` (a stop request is one); the producer then notices the closed channel and ends.
pub fn for_each_batch(
    ds: &Dataset,
    order: &[usize],
    batch_size: usize,
    aug: Option<AugmentFor<'_>>,
    norm: Normalize,
    mut f: impl FnMut(usize, Batch) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Batch>(PREFETCH);
        s.spawn(move || {
            for (i, chunk) in order.chunks(batch_size).enumerate() {
                if tx.send(make_batch(ds, chunk, aug.map(|a| (a, i)), norm)).is_err() {
                    break;
                }
            }
        });
        for (i, batch) in rx.iter().enumerate() {
            f(i, batch)?;
        }
        Ok(())
    })
}
