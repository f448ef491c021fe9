//! The catalog of what jobs train on: uploaded datasets and backbone weights, each a file (or
//! folder) on disk plus a row in the database, kept in step.
//!
//! It owns their whole lifecycle: an upload streamed to a temporary file, the check (archive
//! extraction, weights against their architecture), the move into place, the row, listing and
//! lookup, and the delete (row and files, refused while a queued or running job uses them). Any
//! failure leaves nothing half-written: no row without its files, no files without their row.
//!
//! Sits between `http` (above) and `db`, `datasets`, `train` (below); knows nothing of HTTP.

mod datasets;
mod error;
mod upload;
mod weights;

use std::path::PathBuf;

use sqlx::SqlitePool;

use crate::datasets::ImportLimits;

pub use datasets::Dataset;
pub use error::CatalogError;
pub use upload::{Upload, UploadError};
pub use weights::{architectures, Architecture, NewWeights, Weights};

/// Where the catalog keeps its files.
#[derive(Debug, Clone)]
pub struct CatalogPaths {
    /// One folder per dataset, named by its id.
    pub datasets: PathBuf,
    /// One `<id>.safetensors` per uploaded weights file.
    pub backbones: PathBuf,
    /// Uploads being received; nothing in it outlives its request.
    pub uploads: PathBuf,
}

/// Datasets and backbone weights: files and rows together.
pub struct Catalog {
    pool: SqlitePool,
    paths: CatalogPaths,
    import_limits: ImportLimits,
}

impl Catalog {
    pub fn new(pool: SqlitePool, paths: CatalogPaths, import_limits: ImportLimits) -> Self {
        Self { pool, paths, import_limits }
    }

    /// A new, empty upload of at most `limit` bytes under a fresh id; its temporary file is
    /// removed when the [`Upload`] is dropped, whatever happened to the request.
    pub async fn start_upload(&self, limit: u64) -> Result<Upload, CatalogError> {
        tokio::fs::create_dir_all(&self.paths.uploads).await?;
        Ok(Upload::new(&self.paths.uploads, limit))
    }
}
