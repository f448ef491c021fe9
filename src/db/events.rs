//! The `job_events` table: a job's history, in order.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub job_id: String,
    pub seq: i64,
    pub kind: String,
    /// JSON object.
    pub data: String,
    pub created_at: DateTime<Utc>,
}

/// Appends an event; the next sequence number of the job is taken inside the insert, so two
/// writers can never get the same one.
pub async fn append<'e>(
    db: impl SqliteExecutor<'e>,
    job_id: &str,
    kind: &str,
    data: &str,
    created_at: DateTime<Utc>,
) -> sqlx::Result<EventRow> {
    sqlx::query_as(
        "INSERT INTO job_events (job_id, seq, kind, data, created_at)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?1), ?2, ?3, ?4)
         RETURNING *",
    )
    .bind(job_id)
    .bind(kind)
    .bind(data)
    .bind(created_at)
    .fetch_one(db)
    .await
}

/// Events after `after_seq`, oldest first, at most `limit`.
pub async fn list_after<'e>(
    db: impl SqliteExecutor<'e>,
    job_id: &str,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as("SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?")
        .bind(job_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(db)
        .await
}
