//! The `idempotency_keys` table: per operation and key, the request's hash and the first answer.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    /// Set with `resource_id` once the job or dataset exists.
    pub request_hash: Option<String>,
    pub resource_id: Option<String>,
    /// Set once the answer is recorded.
    pub status: Option<i64>,
    pub response: Option<String>,
}

/// A reserved key, to be tied to what its request creates in the transaction that creates it.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim<'a> {
    pub operation: &'a str,
    pub key: &'a str,
    pub token: &'a str,
    pub request_hash: &'a str,
}

/// Claims the key for a first request, under `token`; `false` when it is taken (answered, in
/// flight, or naming what it created). An unanswered key that created nothing and was reserved
/// before `stale_before` is taken over: its request died without freeing it.
pub async fn reserve<'e>(
    db: impl SqliteExecutor<'e>,
    operation: &str,
    key: &str,
    token: &str,
    now: DateTime<Utc>,
    stale_before: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (operation, key, token, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (operation, key) DO UPDATE SET token = ?3, created_at = ?4
         WHERE status IS NULL AND resource_id IS NULL AND created_at < ?5",
    )
    .bind(operation)
    .bind(key)
    .bind(token)
    .bind(now)
    .bind(stale_before)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, operation: &str, key: &str) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query_as(
        "SELECT request_hash, resource_id, status, response FROM idempotency_keys WHERE operation = ? AND key = ?",
    )
    .bind(operation)
    .bind(key)
    .fetch_optional(db)
    .await
}

/// Ties the key to the job or dataset its request creates: called in the creating transaction,
/// which fails (`RowNotFound`) if the request no longer holds the key.
pub async fn attach<'e>(db: impl SqliteExecutor<'e>, claim: KeyClaim<'_>, resource_id: &str) -> sqlx::Result<()> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET request_hash = ?, resource_id = ?
         WHERE operation = ? AND key = ? AND token = ? AND status IS NULL",
    )
    .bind(claim.request_hash)
    .bind(resource_id)
    .bind(claim.operation)
    .bind(claim.key)
    .bind(claim.token)
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(())
}

/// Records the answer to the request that reserved the key.
pub async fn complete<'e>(
    db: impl SqliteExecutor<'e>,
    claim: KeyClaim<'_>,
    status: u16,
    response: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET request_hash = ?, status = ?, response = ?
         WHERE operation = ? AND key = ? AND token = ? AND status IS NULL",
    )
    .bind(claim.request_hash)
    .bind(i64::from(status))
    .bind(response)
    .bind(claim.operation)
    .bind(claim.key)
    .bind(claim.token)
    .execute(db)
    .await?;
    Ok(())
}

/// Frees a reserved key whose request failed or was abandoned (and created nothing), so that a
/// retry runs again.
pub async fn release<'e>(db: impl SqliteExecutor<'e>, operation: &str, key: &str, token: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE operation = ? AND key = ? AND token = ? AND status IS NULL AND resource_id IS NULL",
    )
    .bind(operation)
    .bind(key)
    .bind(token)
    .execute(db)
    .await?;
    Ok(())
}

/// Frees every reserved key whose request created nothing: at start-up, the requests that held
/// them died with the previous process. A key whose job or dataset was created stays: a retry
/// gets that.
pub async fn release_all_unanswered<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<u64> {
    let done =
        sqlx::query("DELETE FROM idempotency_keys WHERE status IS NULL AND resource_id IS NULL").execute(db).await?;
    Ok(done.rows_affected())
}

/// Forgets keys used before `cutoff`.
pub async fn delete_older_than<'e>(db: impl SqliteExecutor<'e>, cutoff: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?").bind(cutoff).execute(db).await?;
    Ok(done.rows_affected())
}
