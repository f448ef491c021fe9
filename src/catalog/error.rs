//! What can go wrong in the catalog, each variant with its cause, for `http` to map.

use crate::datasets::DatasetError;
use crate::train::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    /// A queued or running job trains on the dataset.
    #[error("dataset {0} is used by a queued or running job")]
    DatasetInUse(String),
    /// A queued or running job starts from the weights.
    #[error("backbone {0} is used by a queued or running job")]
    BackboneInUse(String),
    /// The archive cannot be imported (mostly the upload's fault; `Io` is ours).
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The weights do not fit their architecture.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A stored row does not parse: a bug or a hand-edited database.
    #[error("stored {what} of {id} does not parse")]
    StoredRow {
        what: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// The blocking check panicked or was cancelled.
    #[error("a blocking task failed")]
    Task(#[from] tokio::task::JoinError),
}
