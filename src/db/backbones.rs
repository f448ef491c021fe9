//! The `backbones` table: uploaded pretrained weights.

use chrono::{DateTime, Utc};
use sqlx::SqliteExecutor;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackboneRow {
    pub id: String,
    pub name: String,
    pub architecture: String,
    pub alpha: Option<f64>,
    pub format: String,
    pub path: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub tensors: i64,
    pub params: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, row: &BackboneRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO backbones (id, name, architecture, alpha, format, path, size_bytes, sha256, tensors, params, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.id)
    .bind(&row.name)
    .bind(&row.architecture)
    .bind(row.alpha)
    .bind(&row.format)
    .bind(&row.path)
    .bind(row.size_bytes)
    .bind(&row.sha256)
    .bind(row.tensors)
    .bind(row.params)
    .bind(row.created_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<Option<BackboneRow>> {
    sqlx::query_as("SELECT * FROM backbones WHERE id = ?").bind(id).fetch_optional(db).await
}

pub async fn list<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<BackboneRow>> {
    sqlx::query_as("SELECT * FROM backbones ORDER BY id DESC").fetch_all(db).await
}

/// Deletes the row unless a queued or running job starts from these weights (the spec names
/// them as `model.backbone.weights`); returns whether it went.
pub async fn delete_if_unused<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "DELETE FROM backbones WHERE id = ?1 AND NOT EXISTS (
             SELECT 1 FROM jobs WHERE state IN ('queued', 'running')
               AND json_extract(spec, '$.model.backbone.weights') = ?1)",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
