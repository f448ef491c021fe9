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
    #[error("{0}")]
    Internal(String),
}
