//! Recording how a job ended: its terminal state, what it produced, and its last two events
//! (`state`, then `end`), written together or not at all. The `end` payload is built here only.

use super::event::{EndEvent, EventPayload, StateEvent};
use super::{hub, JobState, Jobs, JobsError};
use crate::db;
use crate::train::TrainOutcome;

/// How a job ended.
#[derive(Debug)]
pub(super) enum JobEnd {
    Succeeded(TrainOutcome),
    Failed(String),
    Canceled,
}

impl JobEnd {
    fn state(&self) -> JobState {
        match self {
            JobEnd::Succeeded(_) => JobState::Succeeded,
            JobEnd::Failed(_) => JobState::Failed,
            JobEnd::Canceled => JobState::Canceled,
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            JobEnd::Failed(error) => Some(error),
            _ => None,
        }
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
            error: self.error().map(str::to_owned),
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
        if let JobEnd::Succeeded(outcome) = end {
            if let Some(test) = &outcome.test {
                db::jobs::set_test_metrics(&mut *tx, job_id, test).await?;
            }
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
        tx.commit().await?;
        self.hub.publish(state_event);
        self.hub.publish(end_event);
        Ok(true)
    }
}
