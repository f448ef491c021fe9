//! The `jobs` table: the queue and each job's current state.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::SqliteExecutor;

use crate::job_state::{FailureCode, JobState};
use crate::train::{Evaluations, JobSpec, Metrics, ModelSummary};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub name: Option<String>,
    pub dataset_id: String,
    pub validation_dataset_id: Option<String>,
    /// The accepted spec, decoded once as the row is read (stored as JSON text).
    pub spec: Json<JobSpec>,
    pub summary: Json<ModelSummary>,
    pub state: JobState,
    pub phase_index: Option<i64>,
    pub phase_name: Option<String>,
    pub epoch: Option<i64>,
    /// The latest `step` or `epoch` event's data.
    pub latest_metrics: Option<Json<serde_json::Value>>,
    /// Test-set loss and accuracy, once finished.
    pub test_metrics: Option<Json<Metrics>>,
    /// The final weights' evaluations, once succeeded.
    pub evaluation: Option<Json<Evaluations>>,
    pub error: Option<String>,
    /// Why it failed, as a code; `None` unless failed (and for jobs that failed before codes).
    pub error_code: Option<FailureCode>,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub final_weights_path: Option<String>,
    pub final_weights_size: Option<i64>,
    pub final_weights_sha256: Option<String>,
    /// The class names, in label order.
    pub classes: Option<Json<Vec<String>>>,
}

/// A new job, always `queued`.
pub struct NewJob<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub dataset_id: &'a str,
    pub validation_dataset_id: Option<&'a str>,
    pub spec: &'a JobSpec,
    pub summary: &'a ModelSummary,
    pub classes: &'a [String],
    pub created_at: DateTime<Utc>,
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, job: &NewJob<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, name, dataset_id, validation_dataset_id, spec, summary, classes, state, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(job.id)
    .bind(job.name)
    .bind(job.dataset_id)
    .bind(job.validation_dataset_id)
    .bind(Json(job.spec))
    .bind(Json(job.summary))
    .bind(Json(job.classes))
    .bind(JobState::Queued)
    .bind(job.created_at)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = ?").bind(id).fetch_optional(db).await
}

/// Newest first, optionally only those in one state.
pub async fn list<'e>(db: impl SqliteExecutor<'e>, state: Option<JobState>, limit: i64) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as("SELECT * FROM jobs WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2")
        .bind(state)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Atomically takes the oldest queued job and marks it running.
pub async fn claim_next<'e>(db: impl SqliteExecutor<'e>, now: DateTime<Utc>) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(
        "UPDATE jobs SET state = ?2, started_at = COALESCE(started_at, ?1), attempts = attempts + 1
         WHERE id = (SELECT id FROM jobs WHERE state = ?3 ORDER BY id LIMIT 1) AND state = ?3
         RETURNING *",
    )
    .bind(now)
    .bind(JobState::Running)
    .bind(JobState::Queued)
    .fetch_optional(db)
    .await
}

/// Jobs a crash left `running` go back to the queue; returns their ids.
pub async fn requeue_running<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("UPDATE jobs SET state = ? WHERE state = ? RETURNING id")
        .bind(JobState::Queued)
        .bind(JobState::Running)
        .fetch_all(db)
        .await
}

/// Moves a job from one state to another; false when it was not in `from` (someone else won).
pub async fn transition<'e>(
    db: impl SqliteExecutor<'e>,
    id: &str,
    from: JobState,
    to: JobState,
    finished_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET state = ?3, finished_at = COALESCE(?4, finished_at), error = COALESCE(?5, error)
         WHERE id = ?1 AND state = ?2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(finished_at)
    .bind(error)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_progress<'e>(
    db: impl SqliteExecutor<'e>,
    id: &str,
    phase_index: i64,
    phase_name: &str,
    epoch: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET phase_index = ?, phase_name = ?, epoch = ? WHERE id = ?")
        .bind(phase_index)
        .bind(phase_name)
        .bind(epoch)
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn set_latest_metrics<'e>(
    db: impl SqliteExecutor<'e>,
    id: &str,
    metrics: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET latest_metrics = ? WHERE id = ?").bind(Json(metrics)).bind(id).execute(db).await?;
    Ok(())
}

pub async fn set_test_metrics<'e>(db: impl SqliteExecutor<'e>, id: &str, metrics: &Metrics) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET test_metrics = ? WHERE id = ?").bind(Json(metrics)).bind(id).execute(db).await?;
    Ok(())
}

pub async fn set_evaluation<'e>(db: impl SqliteExecutor<'e>, id: &str, evaluation: &Evaluations) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET evaluation = ? WHERE id = ?").bind(Json(evaluation)).bind(id).execute(db).await?;
    Ok(())
}

pub async fn set_error_code<'e>(db: impl SqliteExecutor<'e>, id: &str, code: FailureCode) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET error_code = ? WHERE id = ?").bind(code).bind(id).execute(db).await?;
    Ok(())
}

pub async fn set_final_weights<'e>(
    db: impl SqliteExecutor<'e>,
    id: &str,
    path: &str,
    size: i64,
    sha256: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET final_weights_path = ?, final_weights_size = ?, final_weights_sha256 = ? WHERE id = ?",
    )
    .bind(path)
    .bind(size)
    .bind(sha256)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}
