//! Recording how a job ended: its terminal state, what it produced, its last two events
//! (`state`, then `end`) and its webhook message, written together or not at all. The `end`
//! payload is built here only.

use super::event::{EndEvent, EventPayload, StateEvent};
use super::{hub, JobState, Jobs, JobsError};
use crate::db;
use crate::disk;
use crate::job_state::FailureCode;
use crate::train::{Divergence, TrainError, TrainOutcome};

/// How a job ended.
#[derive(Debug)]
pub(super) enum JobEnd {
    Succeeded(Box<TrainOutcome>),
    Failed(Failure),
    Canceled,
}

/// Why a job failed: a code, the words, and where it diverged when it did.
#[derive(Debug)]
pub(super) struct Failure {
    pub code: FailureCode,
    pub message: String,
    pub diverged: Option<Divergence>,
}

impl Failure {
    /// A failure on the service's side (a panic, an event that could not be stored).
    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self { code: FailureCode::Internal, message: message.into(), diverged: None }
    }
}

impl Failure {
    /// Storing the job's progress failed (the training itself did not).
    pub(super) fn recording(error: &JobsError) -> Self {
        let full = matches!(error, JobsError::Db(error) if disk::is_database_full(error));
        let code = if full { FailureCode::InsufficientStorage } else { FailureCode::Internal };
        Self { code, message: format!("recording training progress failed: {error}"), diverged: None }
    }
}

impl From<&TrainError> for Failure {
    fn from(error: &TrainError) -> Self {
        if let TrainError::Io(io) = error {
            if disk::is_full(io) {
                let message = format!("the disk is full: the job's files could not be written ({io})");
                return Self { code: FailureCode::InsufficientStorage, message, diverged: None };
            }
        }
        let code = match error {
            TrainError::Diverged(_) => FailureCode::Diverged,
            TrainError::Data(_) => FailureCode::InvalidData,
            TrainError::Weights(_) | TrainError::CheckpointRead { .. } => FailureCode::Weights,
            TrainError::Spec(_) => FailureCode::InvalidSpec,
            _ => FailureCode::Internal,
        };
        let diverged = match error {
            TrainError::Diverged(at) => Some((**at).clone()),
            _ => None,
        };
        Self { code, message: error.to_string(), diverged }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl JobEnd {
    fn state(&self) -> JobState {
        match self {
            JobEnd::Succeeded(_) => JobState::Succeeded,
            JobEnd::Failed(_) => JobState::Failed,
            JobEnd::Canceled => JobState::Canceled,
        }
    }

    fn failure(&self) -> Option<&Failure> {
        match self {
            JobEnd::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    fn error(&self) -> Option<&str> {
        self.failure().map(|f| f.message.as_str())
    }

    fn end_event(&self) -> EndEvent {
        let outcome = match self {
            JobEnd::Succeeded(outcome) => Some(outcome),
            _ => None,
        };
        EndEvent {
            state: self.state(),
            test: outcome.and_then(|o| o.test),
            validation: outcome.and_then(|o| o.validation),
            evaluation: outcome.map(|o| o.evaluations()),
            error: self.error().map(str::to_owned),
            error_code: self.failure().map(|f| f.code),
            diverged: self.failure().and_then(|f| f.diverged.clone()),
        }
    }
}

impl Jobs {
    /// Moves a job from `from` to its terminal state and stores its results and its `state` and
    /// `end` events in one transaction, so no reader ever sees a finished job without its end
    /// event (or the reverse); publishes the events once that commits. False, and nothing
    /// written, when the job was no longer in `from` (someone else moved it first).
    pub(super) async fn record_end(&self, job_id: &str, from: JobState, end: &JobEnd) -> Result<bool, JobsError> {
        let state = end.state();
        let mut tx = self.pool.begin().await?;
        if !db::jobs::transition(&mut *tx, job_id, from, state, Some(db::now()), end.error()).await? {
            return Ok(false);
        }
        if let Some(failure) = end.failure() {
            db::jobs::set_error_code(&mut *tx, job_id, failure.code).await?;
        }
        if let JobEnd::Succeeded(outcome) = end {
            if let Some(test) = &outcome.test {
                db::jobs::set_test_metrics(&mut *tx, job_id, test).await?;
            }
            db::jobs::set_evaluation(&mut *tx, job_id, &outcome.evaluations()).await?;
            if let Some(weights) = &outcome.weights {
                let path = weights.path.to_string_lossy();
                db::jobs::set_final_weights(&mut *tx, job_id, &path, weights.size as i64, &weights.sha256).await?;
            }
        }
        let changed = match end.error() {
            Some(error) => StateEvent::Failed { state, error: error.to_owned() },
            None => StateEvent::Changed { state },
        };
        let state_event = hub::store(&mut *tx, job_id, &EventPayload::State(changed)).await?;
        let end_event = hub::store(&mut *tx, job_id, &EventPayload::End(end.end_event())).await?;
        let job = db::jobs::get(&mut *tx, job_id).await?.ok_or_else(|| JobsError::NotFound(job_id.to_owned()))?;
        let webhook = super::webhooks::enqueue_end(&mut tx, &job).await?;
        tx.commit().await?;
        self.hub.publish(state_event);
        self.hub.publish(end_event);
        if webhook {
            self.webhook_wake.notify_one();
        }
        Ok(true)
    }
}
