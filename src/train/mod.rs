//! Training: models, data pipeline, the fit loop, metrics and checkpoints, on candle.
//!
//! This module knows nothing of HTTP, SQL or async runtimes. It sees a [`TrainJob`] (a spec, the
//! samples, where to write checkpoints, what to resume from), a [`Control`] (cooperative stop
//! flag, checked after every batch) and an [`Observer`] (where events go). Whoever calls it
//! persists and broadcasts the events.

pub mod job;
pub mod spec;

pub use job::*;

pub use spec::*;
