//! Training: models, data pipeline, the fit loop, metrics and checkpoints, on candle.
//!
//! This module knows nothing of HTTP, SQL or async runtimes. It sees a [`TrainJob`](crate::train::TrainJob) (a spec, the
//! samples, where to write checkpoints, what to resume from), a [`Control`](crate::train::Control) (cooperative stop
//! flag, checked after every batch) and an [`Observer`](crate::train::Observer) (where events go). Whoever calls it
//! persists and broadcasts the events.
//!
//! The entry points are [`validate`](crate::train::validate) (spec checks without data), [`summarize`](crate::train::summarize) (Keras's
//! `model.summary(show_trainable=True)`), [`check_weights`](crate::train::check_weights) (does a pretrained weights file fit
//! an architecture?), [`run`](crate::train::run) (the whole job) and [`predict`](crate::train::predict) (class probabilities of images
//! from a trained model).
//!
//! Inside, each layer imports only the ones below it (docs/architecture.md draws the order):
//! `spec` (with `class_weights`), `evaluation`, `job`, `error`, `rng` and `kernels` at the bottom; `nn` (layers, params, ops, batch
//! norm); `graph` (folding, fusion, the forward pass); `model` (the layer plans, one file per
//! architecture, and the summary); `weights` (pretrained files); `data` (decoding, augmentation,
//! the feature cache); `checkpoint`; `fit` (the loop); and the entry points on top.

mod checkpoint;
mod class_weights;
mod data;
mod error;
mod evaluation;
mod fit;
mod graph;
mod job;
mod kernels;
mod model;
mod nn;
mod onnx;
mod predict;
mod rng;
mod spec;
mod validate;
mod weights;

#[cfg(test)]
mod backbone_tests;
#[cfg(test)]
mod efficientnet_tests;
#[cfg(test)]
mod tests;

pub use checkpoint::load_weights;
pub use error::{TrainError, WeightsError};
pub use evaluation::{ClassMetrics, Evaluation, Evaluations};
pub use fit::examples::path as example_path;
pub use fit::run;
pub use job::*;
pub use kernels::{configure as configure_kernels, has_avx512 as kernels_use_avx512, KernelSettings};
pub use model::summarize;
pub use onnx::export_onnx;
pub use predict::{predict, preprocess};
pub use spec::*;
pub use validate::validate;
pub use weights::{check_weights, formats as weight_formats, WeightsReport};

/// The internals the benchmarks in `benches/` time: not part of the service's interface, and
/// free to change with the code they expose.
#[doc(hidden)]
pub mod bench {
    pub use super::fit::{loss_kind, train_step, train_step_from, LossKind, Optimizer};
    pub use super::kernels::{conv2d, depthwise_conv2d, has_avx512, max_pool2d, threads, Pad, SamePadding};
    pub use super::model::Model;
    pub use super::nn::{Backend, ForwardCtx};
    pub use super::rng::{rng, Stream};
}
