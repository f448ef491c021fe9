//! The lifecycle of a job: `queued → running → succeeded | failed | canceled` (and `running →
//! queued` when the service stops mid-run).
//!
//! A leaf module on purpose: `db` stores the state (it is the `jobs.state` column's type),
//! `jobs` moves it, and `http` shows and filters by it. Living in `jobs` would make `db` import
//! `jobs`, against the `http → jobs → db` direction; living here, everyone imports it and it
//! imports nothing of the crate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a job is in its lifecycle. Stored as the lowercase name (the `jobs.state` column's
/// CHECK constraint lists the same strings), and written the same way in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker is training it.
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    /// Every state, in lifecycle order (for filters and metrics).
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// A job in a terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, for clients to match on (the `error` beside it says it in words). Stored
/// as the `jobs.error_code` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum FailureCode {
    /// A loss or a weight stopped being finite (the end event says where, with the last finite
    /// metrics).
    Diverged,
    /// The dataset: too few images, none decodable, a class missing.
    InvalidData,
    /// The initial weights or a checkpoint to resume from do not fit the model.
    Weights,
    /// The spec cannot be trained as given (found only once training starts).
    InvalidSpec,
    /// The data directory's disk filled up: a checkpoint, the final weights or the job's
    /// progress could not be written (what was half-written is removed).
    InsufficientStorage,
    /// Training failed in a way that is the service's fault (a tensor error, a file that could
    /// not be written, a panic).
    Internal,
}

/// A name that is not a job state; its message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state must be one of {:?}", JobState::ALL.map(JobState::as_str))]
pub struct UnknownJobState(pub String);

impl FromStr for JobState {
    type Err = UnknownJobState;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        JobState::ALL.into_iter().find(|state| state.as_str() == name).ok_or_else(|| UnknownJobState(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_and_serde_agree_on_every_name() {
        for state in JobState::ALL {
            assert_eq!(state.to_string().parse::<JobState>(), Ok(state));
            assert_eq!(serde_json::to_value(state).unwrap(), serde_json::json!(state.as_str()));
        }
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let error = "bogus".parse::<JobState>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"state must be one of ["queued", "running", "succeeded", "failed", "canceled"]"#
        );
    }

    #[test]
    fn only_the_ends_are_terminal() {
        let terminal: Vec<_> = JobState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [JobState::Succeeded, JobState::Failed, JobState::Canceled]);
    }

    #[tokio::test]
    async fn stored_as_the_same_text() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        for state in JobState::ALL {
            let (text, back): (String, JobState) =
                sqlx::query_as("SELECT ?1, ?1").bind(state).fetch_one(&pool).await.unwrap();
            assert_eq!((text.as_str(), back), (state.as_str(), state));
        }
    }
}
