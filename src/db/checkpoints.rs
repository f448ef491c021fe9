//! The `checkpoints` table: completely written checkpoint files of each job.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::SqliteExecutor;

use crate::train::{Evaluation, ResumeState};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointRow {
    pub id: String,
    pub job_id: String,
    pub phase_index: i64,
    pub phase_name: String,
    pub epoch: i64,
    pub global_step: i64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// The validation set's evaluation of these weights.
    pub evaluation: Option<Json<Evaluation>>,
    pub path: String,
    pub size_bytes: i64,
    pub sha256: String,
    pub optimizer_path: Option<String>,
    /// The training loop's state after this checkpoint (stored as JSON text).
    pub resume_state: Json<ResumeState>,
    pub created_at: DateTime<Utc>,
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, row: &CheckpointRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO checkpoints (id, job_id, phase_index, phase_name, epoch, global_step, val_loss, val_accuracy,
                                  path, size_bytes, sha256, optimizer_path, resume_state, created_at, evaluation)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.id)
    .bind(&row.job_id)
    .bind(row.phase_index)
    .bind(&row.phase_name)
    .bind(row.epoch)
    .bind(row.global_step)
    .bind(row.val_loss)
    .bind(row.val_accuracy)
    .bind(&row.path)
    .bind(row.size_bytes)
    .bind(&row.sha256)
    .bind(&row.optimizer_path)
    .bind(&row.resume_state)
    .bind(row.created_at)
    .bind(&row.evaluation)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<Option<CheckpointRow>> {
    sqlx::query_as("SELECT * FROM checkpoints WHERE id = ?").bind(id).fetch_optional(db).await
}

/// Oldest first.
pub async fn list_for_job<'e>(db: impl SqliteExecutor<'e>, job_id: &str) -> sqlx::Result<Vec<CheckpointRow>> {
    sqlx::query_as("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY global_step, created_at")
        .bind(job_id)
        .fetch_all(db)
        .await
}

pub async fn delete<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM checkpoints WHERE id = ?").bind(id).execute(db).await?;
    Ok(())
}

pub async fn clear_optimizer_path<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE checkpoints SET optimizer_path = NULL WHERE id = ?").bind(id).execute(db).await?;
    Ok(())
}
