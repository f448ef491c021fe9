//! Checkpoints: the list of a job's kept checkpoints and the download of their weights.

use axum::body::Body;
use axum::extract::State;

use super::path::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::io::ReaderStream;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::jobs::load_job;
use super::json::Json;
use super::AppState;
use crate::db;
use crate::train::Metrics;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_job_checkpoints))
        .routes(routes!(download_checkpoint_weights))
        .routes(routes!(download_job_weights))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointView {
    pub id: String,
    pub job_id: String,
    pub phase_index: usize,
    pub phase: String,
    /// Epoch within the phase (1-based) after which it was taken.
    pub epoch: u32,
    pub validation: Option<Metrics>,
    pub size: u64,
    /// Hex sha256 of the weights file.
    pub sha256: String,
    /// The lowest validation loss of its phase.
    pub best: bool,
    /// The newest of its phase.
    pub last: bool,
    /// Where to download the weights (safetensors).
    pub download: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointView>,
}

/// A job's kept checkpoints: at least the best and the last of every phase, oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints", tag = "checkpoints", operation_id = "list_job_checkpoints",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Checkpoints", body = CheckpointList),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_job_checkpoints(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CheckpointList>, ApiError> {
    load_job(&state, &id).await?;
    let rows = db::checkpoints::list_for_job(&state.jobs.pool, &id).await?;
    let best = crate::jobs::best_of_each_phase(&rows);
    let last_of_phase: std::collections::HashMap<i64, String> =
        rows.iter().map(|r| (r.phase_index, r.id.clone())).collect();
    let checkpoints = rows
        .into_iter()
        .map(|row| CheckpointView {
            best: best.contains(&row.id),
            last: last_of_phase.get(&row.phase_index) == Some(&row.id),
            download: format!("/v1/checkpoints/{}/weights", row.id),
            validation: row.val_loss.zip(row.val_accuracy).map(|(loss, accuracy)| Metrics { loss, accuracy }),
            phase_index: row.phase_index as usize,
            phase: row.phase_name,
            epoch: row.epoch as u32,
            size: row.size_bytes as u64,
            sha256: row.sha256,
            job_id: row.job_id,
            created_at: row.created_at,
            id: row.id,
        })
        .collect();
    Ok(Json(CheckpointList { checkpoints }))
}

/// Download a checkpoint's weights as safetensors.
///
/// Tensor names are the model's layer names plus the weight, e.g. `backbone.block1.bn.gamma`.
#[utoipa::path(get, path = "/v1/checkpoints/{id}/weights", tag = "checkpoints", operation_id = "download_checkpoint_weights",
    params(("id" = String, Path, description = "Checkpoint id")),
    responses(
        (status = 200, description = "The safetensors file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such checkpoint", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn download_checkpoint_weights(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row =
        db::checkpoints::get(&state.jobs.pool, &id).await?.ok_or_else(|| ApiError::not_found("checkpoint", &id))?;
    let filename = format!("{}-phase{}-epoch{}.safetensors", row.job_id, row.phase_index, row.epoch);
    send_safetensors(&row.path, row.size_bytes, &row.sha256, &filename).await
}

/// Download the model a job ended with (safetensors), once it succeeded.
#[utoipa::path(get, path = "/v1/jobs/{id}/weights", tag = "checkpoints", operation_id = "download_job_weights",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The safetensors file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such job, or it has no final weights (yet)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn download_job_weights(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = load_job(&state, &id).await?;
    match (job.final_weights_path, job.final_weights_size, job.final_weights_sha256) {
        (Some(path), Some(size), Some(sha256)) => {
            send_safetensors(&path, size, &sha256, &format!("{id}-final.safetensors")).await
        }
        _ => Err(ApiError::not_found("final weights of job", id)),
    }
}

async fn send_safetensors(path: &str, size: i64, sha256: &str, filename: &str) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
            (header::ETAG, format!("\"{sha256}\"")),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response())
}
