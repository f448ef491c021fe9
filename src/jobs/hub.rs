//! Job events: stored first (SQLite), then fanned out to live subscribers.
//!
//! One broadcast channel carries every job's events; a subscriber filters by job and, when it
//! falls behind (lagged), catches up from the database, so nobody misses or repeats an event.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{SqliteExecutor, SqlitePool};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use super::event::{EventPayload, END};
use super::JobsError;
use crate::db;

/// One stored event of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobEvent {
    /// Per-job sequence number (the SSE `id:`).
    pub id: i64,
    pub job_id: String,
    /// The SSE `event:` type: the tag of an [`EventPayload`].
    pub event: String,
    /// The SSE `data:`: that variant's content, as stored.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl JobEvent {
    pub fn is_end(&self) -> bool {
        self.event == END
    }
}

impl From<db::events::EventRow> for JobEvent {
    fn from(row: db::events::EventRow) -> Self {
        let data = serde_json::from_str(&row.data).unwrap_or(serde_json::Value::Null);
        Self { id: row.seq, job_id: row.job_id, event: row.kind, data, created_at: row.created_at }
    }
}

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<JobEvent>,
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.sender.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Hands an already stored event to live subscribers.
    pub fn publish(&self, event: JobEvent) {
        // No subscriber is not an error: the event is in the database for whoever comes later.
        let _ = self.sender.send(event);
    }

    /// Stores an event, then publishes it.
    pub async fn emit(&self, pool: &SqlitePool, job_id: &str, payload: &EventPayload) -> Result<JobEvent, JobsError> {
        let event = store(pool, job_id, payload).await?;
        self.publish(event.clone());
        Ok(event)
    }
}

/// Stores an event without publishing it: inside a transaction, publish it once that commits.
pub async fn store<'e>(
    db: impl SqliteExecutor<'e>,
    job_id: &str,
    payload: &EventPayload,
) -> Result<JobEvent, JobsError> {
    let (kind, data) = payload.to_parts()?;
    // As a `Value` (sorted keys), the stored text is what this service always wrote.
    let row = db::events::append(db, job_id, &kind, &data.to_string(), db::now()).await?;
    Ok(JobEvent { id: row.seq, job_id: row.job_id, event: row.kind, data, created_at: row.created_at })
}

/// Reads a job's stored events after `after`, oldest first, in pages.
pub async fn history_after(pool: &SqlitePool, job_id: &str, after: i64, limit: i64) -> sqlx::Result<Vec<JobEvent>> {
    Ok(db::events::list_after(pool, job_id, after, limit).await?.into_iter().map(JobEvent::from).collect())
}
