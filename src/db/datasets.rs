//! The `datasets` table.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    /// JSON: `[{"name", "images"}]`.
    pub classes: String,
    pub image_count: i64,
    pub skipped: i64,
    /// JSON: `[{"path", "reason"}]`.
    pub skipped_examples: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, row: &DatasetRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO datasets (id, name, classes, image_count, skipped, skipped_examples, size_bytes, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.id)
    .bind(&row.name)
    .bind(&row.classes)
    .bind(row.image_count)
    .bind(row.skipped)
    .bind(&row.skipped_examples)
    .bind(row.size_bytes)
    .bind(row.created_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<Option<DatasetRow>> {
    sqlx::query_as("SELECT * FROM datasets WHERE id = ?").bind(id).fetch_optional(db).await
}

pub async fn list<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<DatasetRow>> {
    sqlx::query_as("SELECT * FROM datasets ORDER BY created_at DESC, id DESC").fetch_all(db).await
}

/// Deletes the row unless a queued or running job uses the dataset; returns whether it went.
/// One statement, so no job can be queued against it between the check and the delete.
pub async fn delete_if_unused<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "DELETE FROM datasets WHERE id = ?1 AND NOT EXISTS (
             SELECT 1 FROM jobs WHERE state IN ('queued', 'running')
               AND (dataset_id = ?1 OR validation_dataset_id = ?1))",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
