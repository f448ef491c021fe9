//! Training: models, data pipeline, the fit loop, metrics and checkpoints, on candle.
//!
//! This module knows nothing of HTTP, SQL or async runtimes. It sees a [`TrainJob`] (a spec, the
//! samples, where to write checkpoints, what to resume from), a [`Control`] (cooperative stop
//! flag, checked after every batch) and an [`Observer`] (where events go). Whoever calls it
//! persists and broadcasts the events.
//!
//! The entry points are [`validate`] (spec checks without data), [`summarize`] (Keras's
//! `model.summary(show_trainable=True)`), [`check_weights`] (does a pretrained weights file fit
//! an architecture?), [`run`] (the whole job) and [`predict`] (class probabilities of images
//! from a trained model).

pub mod batch_norm;
pub mod checkpoint;
pub mod data;
pub mod early_stopping;
pub mod feature_cache;
pub mod fit;
pub mod fold;
pub mod fusion;
pub mod job;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod predict;
pub mod rng;
pub mod spec;
pub mod step;
pub mod summary;
pub mod validate;
pub mod weights;

#[cfg(test)]
mod backbone_tests;
#[cfg(test)]
mod tests;

pub use checkpoint::load_weights;
pub use fit::run;
pub use job::*;
pub use predict::predict;
pub use spec::*;
pub use summary::summarize;
pub use validate::validate;
pub use weights::{check_weights, formats as weight_formats, WeightsError, WeightsFormat, WeightsReport};
