//! The `webhook_messages` outbox and its `webhook_attempts`.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

use crate::webhook::{DeliveryState, WebhookEventType};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub job_id: String,
    pub event_type: WebhookEventType,
    pub url: String,
    pub payload: String,
    pub state: DeliveryState,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub attempts: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub message_id: String,
    pub attempt: i64,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

/// A new message, due at once.
pub struct NewMessage<'a> {
    pub id: &'a str,
    pub job_id: &'a str,
    pub event_type: WebhookEventType,
    pub url: &'a str,
    pub payload: &'a str,
    pub created_at: DateTime<Utc>,
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, message: &NewMessage<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_messages (id, job_id, event_type, url, payload, state, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )
    .bind(message.id)
    .bind(message.job_id)
    .bind(message.event_type)
    .bind(message.url)
    .bind(message.payload)
    .bind(DeliveryState::Pending)
    .bind(message.created_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes up to `limit` pending messages due by `now`, oldest due first, and pushes their next
/// attempt to `held_until`: another dispatcher on the same database leaves them alone while
/// this one tries, and takes them over after `held_until` if this one died trying.
pub async fn claim_due<'e>(
    db: impl SqliteExecutor<'e>,
    now: DateTime<Utc>,
    held_until: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as(
        "UPDATE webhook_messages SET next_attempt_at = ?2
         WHERE id IN (SELECT id FROM webhook_messages WHERE state = ?3 AND next_attempt_at <= ?1
                      ORDER BY next_attempt_at LIMIT ?4)
         RETURNING *",
    )
    .bind(now)
    .bind(held_until)
    .bind(DeliveryState::Pending)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// When the next pending message is due, if any is.
pub async fn next_due<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM webhook_messages WHERE state = ?")
        .bind(DeliveryState::Pending)
        .fetch_one(db)
        .await
}

pub async fn insert_attempt<'e>(db: impl SqliteExecutor<'e>, attempt: &AttemptRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (message_id, attempt, started_at, duration_ms, status_code, error)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&attempt.message_id)
    .bind(attempt.attempt)
    .bind(attempt.started_at)
    .bind(attempt.duration_ms)
    .bind(attempt.status_code)
    .bind(&attempt.error)
    .execute(db)
    .await?;
    Ok(())
}

/// Records where a message stands after an attempt: its count, its state, and when it is tried
/// next (`None` once delivered or given up).
pub async fn set_outcome<'e>(
    db: impl SqliteExecutor<'e>,
    id: &str,
    attempts: i64,
    state: DeliveryState,
    next_attempt_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE webhook_messages SET attempts = ?, state = ?, next_attempt_at = ? WHERE id = ?")
        .bind(attempts)
        .bind(state)
        .bind(next_attempt_at)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// A job's messages, oldest first.
pub async fn messages_of_job<'e>(db: impl SqliteExecutor<'e>, job_id: &str) -> sqlx::Result<Vec<MessageRow>> {
    sqlx::query_as("SELECT * FROM webhook_messages WHERE job_id = ? ORDER BY created_at, id")
        .bind(job_id)
        .fetch_all(db)
        .await
}

/// Every attempt at a job's messages, in order.
pub async fn attempts_of_job<'e>(db: impl SqliteExecutor<'e>, job_id: &str) -> sqlx::Result<Vec<AttemptRow>> {
    sqlx::query_as(
        "SELECT a.* FROM webhook_attempts a JOIN webhook_messages m ON m.id = a.message_id
         WHERE m.job_id = ? ORDER BY a.message_id, a.attempt",
    )
    .bind(job_id)
    .fetch_all(db)
    .await
}
