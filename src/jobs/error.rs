//! Errors of the job layer, as data the HTTP layer maps to problem+json.

use crate::job_state::JobState;
use crate::train::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("job {0} not found")]
    NotFound(String),
    /// The spec cannot be trained; names the offending field.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The job already ended; it cannot be canceled.
    #[error("job {id} already ended ({state})")]
    AlreadyFinished { id: String, state: JobState },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// An event or a stored value could not be written as JSON.
    #[error("encoding JSON: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("{0}")]
    Internal(String),
}
