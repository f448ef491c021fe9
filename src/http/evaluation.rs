//! A job's evaluation: the confusion matrix and per-class metrics of its final weights (or of
//! one kept checkpoint's) on the validation and test sets.

use axum::extract::State;
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
    OpenApiRouter::new().routes(routes!(get_job_evaluation))
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
