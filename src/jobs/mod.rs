//! The job queue: submission with validation, cancellation, workers that train, and the event
//! history that SSE subscribers follow. Sits between `http` (above) and `db`, `datasets`,
//! `train` (below).

mod end;
mod error;
mod event;
mod hub;
mod retention;
pub use retention::best_of_each_phase;
mod runner;
mod submit;
mod webhooks;
pub use webhooks::{JobEnded, WebhookPayload, WebhookSettings};
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::job_state::{FailureCode, JobState};
pub use error::JobsError;
pub use event::{
    CheckpointEvent, EndEvent, EpochEvent, EventPayload, PhaseEvent, ResumedFrom, Stage, StateEvent, StepEvent,
    StreamClosed,
};
pub use hub::{history_after, EventHub, JobEvent};
pub use submit::CancelOutcome;
pub use worker::spawn_workers;

use crate::train::Control;

/// Where the job layer keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    pub datasets: PathBuf,
    pub checkpoints: PathBuf,
    /// Uploaded pretrained weights.
    pub backbones: PathBuf,
}

/// Shared by the HTTP handlers and the workers.
pub struct Jobs {
    pub pool: SqlitePool,
    pub hub: EventHub,
    pub paths: Paths,
    /// Stop flags of the jobs this process runs, by job id: registered when a job is claimed,
    /// removed once its end is recorded.
    running: Mutex<HashMap<String, Arc<Control>>>,
    /// Held while a worker claims a job and registers its stop flag, and while a cancel looks
    /// at a job: a cancel sees a job either still queued or running with its flag.
    claim_gate: tokio::sync::Mutex<()>,
    /// Wakes idle workers when a job is queued.
    wake: Notify,
    /// Wakes the webhook dispatcher when a message is written.
    webhook_wake: Notify,
    webhook_settings: WebhookSettings,
    /// Cancelled when the service shuts down.
    pub shutdown: CancellationToken,
}

impl Jobs {
    pub fn new(
        pool: SqlitePool,
        paths: Paths,
        webhook_settings: WebhookSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            hub: EventHub::new(4096),
            paths,
            running: Mutex::new(HashMap::new()),
            claim_gate: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            webhook_wake: Notify::new(),
            webhook_settings,
            shutdown,
        })
    }

    /// Jobs a crash left `running` go back to the queue (they resume from their last checkpoint).
    pub async fn requeue_interrupted(&self) -> Result<usize, JobsError> {
        let ids = crate::db::jobs::requeue_running(&self.pool).await?;
        for id in &ids {
            tracing::warn!(job_id = %id, "job was running when the service stopped; queued again");
            let reason = "interrupted: the service stopped while it ran; it resumes from its last checkpoint";
            let requeued = StateEvent::Requeued { state: JobState::Queued, reason: reason.to_owned() };
            self.hub.emit(&self.pool, id, &EventPayload::State(requeued)).await?;
        }
        Ok(ids.len())
    }

    /// Asks every running job to stop at its next batch boundary and go back to the queue.
    pub fn stop_running_for_shutdown(&self) {
        for control in self.running.lock().expect("running map poisoned").values() {
            control.request_stop(crate::train::StopReason::Shutdown);
        }
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running map poisoned").len()
    }

    fn control_of(&self, job_id: &str) -> Option<Arc<Control>> {
        self.running.lock().expect("running map poisoned").get(job_id).cloned()
    }
}
