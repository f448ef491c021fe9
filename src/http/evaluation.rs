//! A job's evaluation: the confusion matrix and per-class metrics of its final weights (or of
//! one kept checkpoint's) on the validation and test sets.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::jobs::load_job;
use super::json::Json;
use super::path::Path;
use super::query::Query;
use super::AppState;
use crate::db;
use crate::job_state::JobState;
use crate::train::Evaluation;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_job_evaluation)).routes(routes!(get_evaluation_example_image))
}

/// The evaluated sets that have worst-classified images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvaluatedSet {
    Validation,
    Test,
}

impl EvaluatedSet {
    fn as_str(self) -> &'static str {
        match self {
            EvaluatedSet::Validation => "validation",
            EvaluatedSet::Test => "test",
        }
    }
}

/// A worst-classified image of the final weights, as the model saw it (resized, PNG).
///
/// `rank` is its place in the `worst` list of `GET /v1/jobs/{id}/evaluation` (0-based) for
/// `set` `validation` or `test`.
#[utoipa::path(get, path = "/v1/jobs/{id}/evaluation/examples/{set}/{rank}/image", tag = "jobs",
    operation_id = "get_evaluation_example_image",
    params(("id" = String, Path, description = "Job id"), ("set" = EvaluatedSet, Path, description = "`validation` or `test`"),
           ("rank" = usize, Path, minimum = 0, maximum = 11, description = "Place in the `worst` list, 0-based (at most 11)")),
    responses(
        (status = 200, description = "The image", content_type = "image/png", body = Vec<u8>),
        (status = 400, description = "A bad set or rank", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such image", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_evaluation_example_image(
    State(state): State<AppState>,
    Path((id, set, rank)): Path<(String, EvaluatedSet, usize)>,
) -> Result<Response, ApiError> {
    let job = load_job(&state, &id).await?;
    let listed = job.evaluation.as_ref().and_then(|e| match set {
        EvaluatedSet::Validation => e.0.validation.as_ref(),
        EvaluatedSet::Test => e.0.test.as_ref(),
    });
    let what = format!("{} image {rank} of job {id}", set.as_str());
    if listed.is_none_or(|e| rank >= e.worst.len()) {
        return Err(ApiError::not_found("worst-classified image", &what));
    }
    let file = crate::train::example_path(&state.jobs.paths.checkpoints.join(&id), set.as_str(), rank);
    let bytes = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found("worst-classified image", &what))
        }
        Err(error) => return Err(ApiError::Internal(format!("{}: {error}", file.display()))),
    };
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], bytes).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EvaluationParams {
    /// A kept checkpoint of this job; default: the weights the job ended with.
    pub checkpoint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvaluation {
    /// The order of the confusion matrix's rows and columns and of `per_class`.
    pub classes: Vec<String>,
    /// The kept checkpoint holding these weights; null for final weights that no kept checkpoint
    /// holds.
    pub checkpoint_id: Option<String>,
    /// On the validation set; null without one.
    pub validation: Option<Evaluation>,
    /// On the test set, which only the final weights are evaluated on; null without a test split,
    /// and for a checkpoint that does not hold the final weights.
    pub test: Option<Evaluation>,
}

/// The evaluation of a job's weights.
///
/// Without `checkpoint`: the weights the job ended with (the best ones, when its phases restore
/// them), on the validation set and on the test set. With `checkpoint`: that checkpoint's, on the
/// validation set after its epoch (and on the test set if it holds the final weights).
#[utoipa::path(get, path = "/v1/jobs/{id}/evaluation", tag = "jobs", operation_id = "get_job_evaluation",
    params(("id" = String, Path, description = "Job id"), EvaluationParams),
    responses(
        (status = 200, description = "The evaluation", body = JobEvaluation),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job, or no such checkpoint of it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has not succeeded (`no_evaluation`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job_evaluation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<EvaluationParams>,
) -> Result<Json<JobEvaluation>, ApiError> {
    let job = load_job(&state, &id).await?;
    let classes = job.classes.as_ref().map(|c| c.0.clone()).unwrap_or_default();
    let rows = db::checkpoints::list_for_job(&state.jobs.pool, &id).await?;
    let final_weights = job.final_weights_sha256.as_deref();
    let holds_final = |sha256: &str| final_weights == Some(sha256);
    let final_evaluation = job.evaluation.as_ref().map(|e| &e.0);
    let answer = match params.checkpoint {
        Some(wanted) => {
            let row = rows
                .iter()
                .find(|r| r.id == wanted)
                .ok_or_else(|| ApiError::not_found("checkpoint of this job", &wanted))?;
            let test = final_evaluation.filter(|_| holds_final(&row.sha256)).and_then(|e| e.test.clone());
            JobEvaluation {
                classes,
                checkpoint_id: Some(row.id.clone()),
                validation: row.evaluation.as_ref().map(|e| e.0.clone()),
                test,
            }
        }
        None => {
            let Some(evaluation) = final_evaluation.filter(|_| job.state == JobState::Succeeded) else {
                return Err(ApiError::Conflict {
                    code: ErrorCode::NoEvaluation,
                    detail: format!(
                        "job {id} is {}: only a succeeded job's final weights are evaluated (?checkpoint=ID gives a kept checkpoint's)",
                        job.state.as_str()
                    ),
                });
            };
            // The newest checkpoint with the same bytes: restored best weights are its epoch's.
            let checkpoint_id = rows.iter().rev().find(|r| holds_final(&r.sha256)).map(|r| r.id.clone());
            JobEvaluation {
                classes,
                checkpoint_id,
                validation: evaluation.validation.clone(),
                test: evaluation.test.clone(),
            }
        }
    };
    Ok(Json(answer))
}
