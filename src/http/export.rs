//! `GET /v1/jobs/{id}/export`: a checkpoint of the job as a model another runtime can run.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::jobs::load_job;
use super::path::Path;
use super::predict::pick_checkpoint;
use super::query::Query;
use super::AppState;
use crate::train::{self, JobSpec};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_job))
}

/// The formats a model is exported in.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// ONNX (opset 13), `application/onnx`.
    Onnx,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    pub format: ExportFormat,
    /// A checkpoint of this job; default: the best (lowest validation loss) of its last phase,
    /// the one `/predict` uses.
    pub checkpoint: Option<String>,
}

/// Export a trained job's model.
///
/// ONNX: the whole network in inference mode (batch norm as `BatchNormalization` on its moving
/// statistics, dropout removed). One float32 input `input` of shape `[N, 3, H, W]` holding the
/// already preprocessed image, one output `probabilities` of shape `[N, classes]` (two classes
/// give two columns). Metadata: `tanuki.classes` (JSON list, the columns' order),
/// `tanuki.preprocessing` (JSON: height, width, resize mode, and scale/offset or mean/std),
/// `tanuki.architecture` and `tanuki.checkpoint_id`.
#[utoipa::path(get, path = "/v1/jobs/{id}/export", tag = "jobs", operation_id = "export_job",
    params(("id" = String, Path, description = "Job id"), ExportParams),
    responses(
        (status = 200, description = "The model file", content_type = "application/onnx", body = Vec<u8>),
        (status = 400, description = "No or unknown `format`, or a bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job or checkpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has no checkpoint yet", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn export_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &id).await?;
    let (checkpoint_id, weights) = pick_checkpoint(&state, &id, params.checkpoint.as_deref()).await?;
    let spec: JobSpec = job.spec.0;
    let classes: Vec<String> =
        job.classes.map(|c| c.0).ok_or_else(|| ApiError::Internal("the job has no stored classes".into()))?;
    let ExportFormat::Onnx = params.format;
    let checkpoint = checkpoint_id.clone();
    let model = tokio::task::spawn_blocking(move || {
        train::export_onnx(&spec.model, &spec.input, &classes, &weights, &checkpoint)
    })
    .await?
    .map_err(|e| ApiError::Internal(format!("ONNX export: {e}")))?;
    let disposition = format!("attachment; filename=\"{id}-{checkpoint_id}.onnx\"");
    Ok(([(header::CONTENT_TYPE, "application/onnx".to_owned()), (header::CONTENT_DISPOSITION, disposition)], model)
        .into_response())
}
