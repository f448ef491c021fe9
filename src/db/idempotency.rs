//! The `idempotency_keys` table: per operation and key, the request's hash and the first answer.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    /// `None` (with `status` and `response`) while the first request is being handled.
    pub request_hash: Option<String>,
    pub status: Option<i64>,
    pub response: Option<String>,
}

/// Claims the key for a first request; `false` when it is already taken (answered or in flight).
pub async fn reserve<'e>(
    db: impl SqliteExecutor<'e>,
    operation: &str,
    key: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (operation, key, created_at) VALUES (?, ?, ?)
         ON CONFLICT (operation, key) DO NOTHING",
    )
    .bind(operation)
    .bind(key)
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, operation: &str, key: &str) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query_as("SELECT request_hash, status, response FROM idempotency_keys WHERE operation = ? AND key = ?")
        .bind(operation)
        .bind(key)
        .fetch_optional(db)
        .await
}

/// Records the answer to the request that reserved the key.
pub async fn complete<'e>(
    db: impl SqliteExecutor<'e>,
    operation: &str,
    key: &str,
    request_hash: &str,
    status: u16,
    response: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = ?, status = ?, response = ?
         WHERE operation = ? AND key = ? AND status IS NULL",
    )
    .bind(request_hash)
    .bind(i64::from(status))
    .bind(response)
    .bind(operation)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}

/// Frees a reserved key whose request failed or was abandoned, so that a retry runs again.
pub async fn release<'e>(db: impl SqliteExecutor<'e>, operation: &str, key: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM idempotency_keys WHERE operation = ? AND key = ? AND status IS NULL")
        .bind(operation)
        .bind(key)
        .execute(db)
        .await?;
    Ok(())
}

/// Frees every reserved key that has no answer: at start-up, the requests that held them died
/// with the previous process.
pub async fn release_all_unanswered<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE status IS NULL").execute(db).await?;
    Ok(done.rows_affected())
}

/// Forgets keys used before `cutoff`.
pub async fn delete_older_than<'e>(db: impl SqliteExecutor<'e>, cutoff: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?").bind(cutoff).execute(db).await?;
    Ok(done.rows_affected())
}
