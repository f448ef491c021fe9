//! tanuki: a training-job service for transfer learning and fine-tuning of vision models.
//!
//! Dependency direction: `http → jobs → db`, `jobs → train`, `jobs → datasets`, and
//! `http → catalog → db, datasets, train`. The training
//! code knows nothing of HTTP, SQL or the async runtime.

/// Wiring: start, serve, shut down.
pub mod app;
/// Datasets and backbone weights: their files and rows, kept in step.
pub mod catalog;
/// The command-line client (`tanuki jobs …`): speaks only the public HTTP API (a leaf).
pub mod cli;
/// Command-line flags and environment variables.
pub mod config;
/// Dataset archives: safe extraction, class folders, image checks.
pub mod datasets;
/// SQLite: the pool, migrations, one file per table.
pub mod db;
/// The data directory's free space, and telling a full disk from other I/O errors (a leaf).
pub mod disk;
/// The HTTP API: router, handlers, problem+json errors, SSE, OpenAPI.
pub mod http;
/// The job lifecycle states, shared by `db`, `jobs` and `http` (a leaf).
pub mod job_state;
/// The job queue: workers, cancellation, event persistence and fan-out.
pub mod jobs;
/// Allocator and thread-pool settings the process re-runs itself with (read at start-up only).
pub mod process_env;
/// Process-wide counters behind `/metrics`.
pub mod telemetry;
/// For unit tests: the shared weights and photos, skipped when absent.
#[cfg(test)]
mod test_support;
/// Training on candle: models, data pipeline, fit loop, checkpoints.
pub mod train;
/// A job's webhook URL and signing secret, and the Standard Webhooks signature (a leaf).
pub mod webhook;
