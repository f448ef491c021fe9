//! `/v1/jobs`: submit, list, get, cancel, and the stored history and model summary of a job.

use axum::extract::State;

use super::path::Path;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::idempotency::{self, Claim, IdempotencyKey, IdempotencyParams, Operation};
use super::json::Json;
use super::query::{self, Query};
use super::AppState;
use crate::db::{self, jobs::JobRow};
use crate::jobs::{CancelOutcome, FailureCode, JobEvent, JobState};
use crate::train::{JobSpec, Metrics, ModelSummary};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(get_job_metrics))
        .routes(routes!(get_job_model))
}

/// Where a running job is.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhaseProgress {
    pub index: usize,
    pub name: String,
    /// Epochs of this phase completed.
    pub epoch: u32,
    pub epochs: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub name: Option<String>,
    pub state: JobState,
    pub dataset_id: String,
    pub validation_dataset_id: Option<String>,
    pub phase: Option<PhaseProgress>,
    /// The latest `step` or `epoch` event's data.
    #[schema(value_type = Option<Object>)]
    pub latest_metrics: Option<serde_json::Value>,
    /// Loss and accuracy on the held-out test set, once succeeded.
    pub test_metrics: Option<Metrics>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why it failed, as a code: `diverged`, `invalid_data`, `weights`, `invalid_spec`,
    /// `insufficient_storage`, `internal`.
    pub error_code: Option<FailureCode>,
    /// How many times a worker started it (more than one after an interruption).
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The model the job ended with (best weights restored where early stopping did), once
    /// succeeded.
    pub final_weights: Option<FinalWeights>,
    /// The spec's webhook, without its secret.
    pub webhook: Option<WebhookView>,
    /// The spec as accepted, defaults filled in; its `webhook` is left out (see `webhook`).
    pub spec: JobSpec,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// Its deliveries and their attempts.
    pub deliveries: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FinalWeights {
    pub size: u64,
    pub sha256: String,
    /// Where to download them (safetensors).
    pub download: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobHistory {
    pub job_id: String,
    /// Every stored event, oldest first, as the SSE stream sends them.
    pub events: Vec<JobEvent>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsParams {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl TryFrom<JobRow> for JobView {
    type Error = ApiError;
    fn try_from(row: JobRow) -> Result<Self, ApiError> {
        let mut spec = row.spec.0;
        // The secret is never shown again once submitted.
        let webhook = spec
            .webhook
            .take()
            .map(|w| WebhookView { url: w.url.into(), deliveries: format!("/v1/jobs/{}/webhooks", row.id) });
        let phase = match (row.phase_index, &row.phase_name) {
            (Some(index), Some(name)) => Some(PhaseProgress {
                index: index as usize,
                name: name.clone(),
                epoch: row.epoch.unwrap_or(0) as u32,
                epochs: spec.phases.get(index as usize).map_or(0, |p| p.epochs),
            }),
            _ => None,
        };
        let final_weights = match (row.final_weights_size, &row.final_weights_sha256) {
            (Some(size), Some(sha256)) => Some(FinalWeights {
                size: size as u64,
                sha256: sha256.clone(),
                download: format!("/v1/jobs/{}/weights", row.id),
            }),
            _ => None,
        };
        Ok(Self {
            id: row.id,
            name: row.name,
            state: row.state,
            dataset_id: row.dataset_id,
            validation_dataset_id: row.validation_dataset_id,
            phase,
            latest_metrics: row.latest_metrics.map(|m| m.0),
            test_metrics: row.test_metrics.map(|m| m.0),
            error: row.error,
            error_code: row.error_code,
            attempts: row.attempts,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            final_weights,
            webhook,
            spec,
        })
    }
}

pub async fn load_job(state: &AppState, id: &str) -> Result<JobRow, ApiError> {
    db::jobs::get(&state.jobs.pool, id).await?.ok_or_else(|| ApiError::not_found("job", id))
}

/// Submit a job.
///
/// The spec is validated before it is queued; an invalid one is a 422 naming the field.
///
/// With an `Idempotency-Key`, a retry of the same spec answers what the first request was
/// answered (with `Idempotent-Replayed: true`) and queues nothing; the key is kept 24 hours.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "create_job",
    params(IdempotencyParams),
    request_body = JobSpec,
    responses(
        (status = 201, description = "Queued (or, for a retried key, the first answer)", body = JobView),
        (status = 400, description = "Not JSON, or an invalid `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this `Idempotency-Key` is still being handled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid spec (`field` names what was wrong), or an `Idempotency-Key` used before with another spec", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    key: Option<IdempotencyKey>,
    Json(spec): Json<JobSpec>,
) -> Result<Response, ApiError> {
    // The spec as parsed (defaults filled in), so that two spellings of one spec are one request.
    let encoded = serde_json::to_vec(&spec).map_err(|e| ApiError::Internal(format!("encoding the spec: {e}")))?;
    let hash = idempotency::request_hash(&[&encoded]);
    let reservation = match key {
        None => None,
        Some(key) => match idempotency::claim(&state.jobs.pool, Operation::CreateJob, key).await? {
            Claim::Answered(answer) => return answer.replay(&hash),
            Claim::Created(created) => {
                let job = JobView::try_from(load_job(&state, created.id_for(&hash)?).await?)?;
                return idempotency::replayed(StatusCode::CREATED, &job);
            }
            Claim::First(reservation) => Some(reservation),
        },
    };
    let outcome = match state.jobs.submit(spec, reservation.as_ref().map(|r| r.key_claim(&hash))).await {
        Ok(row) => JobView::try_from(row),
        Err(error) => Err(error.into()),
    };
    idempotency::finish(reservation, &hash, StatusCode::CREATED, outcome).await
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListJobsParams),
    responses(
        (status = 200, description = "Jobs", body = JobList),
        (status = 400, description = "Unknown state", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Query(params): Query<ListJobsParams>,
) -> Result<Json<JobList>, ApiError> {
    // Parsed here rather than by the query extractor, so a bad value is answered with this
    // code and field like any other bad parameter.
    let filter = params.state.as_deref().map(str::parse::<JobState>).transpose().map_err(|error| {
        ApiError::BadRequest { code: ErrorCode::InvalidState, detail: error.to_string(), field: Some("state".into()) }
    })?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(query::invalid_parameter("limit", format_args!("must be 1 to 1000, got {limit}")));
    }
    let rows = db::jobs::list(&state.jobs.pool, filter, limit).await?;
    let jobs = rows.into_iter().map(JobView::try_from).collect::<Result<_, _>>()?;
    Ok(Json(JobList { jobs }))
}

/// Get one job: state, current phase and epoch, latest metrics, timestamps, error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(JobView::try_from(load_job(&state, &id).await?)?))
}

/// Cancel a job.
///
/// A queued job is canceled at once (200); a running one stops at its next batch boundary and
/// ends `canceled` (202).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Canceled", body = JobView),
        (status = 202, description = "Stopping at the next batch boundary", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already ended", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    match state.jobs.cancel(&id).await? {
        CancelOutcome::Canceled(row) => Ok((StatusCode::OK, Json(JobView::try_from(row)?))),
        CancelOutcome::Stopping(row) => Ok((StatusCode::ACCEPTED, Json(JobView::try_from(row)?))),
    }
}

/// The job's whole stored history (the events the SSE stream sends), as JSON.
#[utoipa::path(get, path = "/v1/jobs/{id}/metrics", tag = "jobs", operation_id = "get_job_metrics",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "History", body = JobHistory),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobHistory>, ApiError> {
    load_job(&state, &id).await?;
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &JobEvent| e.id);
        let page = crate::jobs::history_after(&state.jobs.pool, &id, after, 1000).await?;
        let done = page.len() < 1000;
        events.extend(page);
        if done {
            break;
        }
    }
    Ok(Json(JobHistory { job_id: id, events }))
}

/// The model summary, as Keras's `model.summary(show_trainable=True)`.
#[utoipa::path(get, path = "/v1/jobs/{id}/model", tag = "jobs", operation_id = "get_job_model",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Layers, output shapes, parameter counts, trainable per phase", body = ModelSummary),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelSummary>, ApiError> {
    let row = load_job(&state, &id).await?;
    Ok(Json(row.summary.0))
}
