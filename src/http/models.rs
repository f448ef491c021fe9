//! `POST /v1/models/summary`: what a spec will train, without queuing anything.

use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::json::Json;
use super::AppState;
use crate::train::{self, AugmentationSpec, InputSpec, JobSpec, ModelSpec, ModelSummary, PhaseSpec, SplitSpec};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(summarize_model))
}

/// The `model`, `input` and `phases` parts of a job spec.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SummaryRequest {
    pub model: ModelSpec,
    #[serde(default)]
    pub input: InputSpec,
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
}

/// Summarise a model before training it.
///
/// Keras's `model.summary(show_trainable=True)` for a spec's model, input and phases: layers,
/// output shapes, parameter counts, and the trainable / non-trainable totals of each phase.
#[utoipa::path(post, path = "/v1/models/summary", tag = "models", operation_id = "summarize_model",
    request_body = SummaryRequest,
    responses(
        (status = 200, description = "The summary", body = ModelSummary),
        (status = 422, description = "The model, input or a phase is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn summarize_model(Json(request): Json<SummaryRequest>) -> Result<Json<ModelSummary>, ApiError> {
    let summary = tokio::task::spawn_blocking(move || {
        // Validate as a job would be, so the same field paths come back for the same mistakes.
        let spec = JobSpec {
            name: None,
            dataset_id: String::new(),
            validation_dataset_id: None,
            split: SplitSpec::default(),
            input: request.input,
            augmentation: AugmentationSpec::default(),
            model: request.model,
            batch_size: 1,
            seed: 0,
            log_every_steps: 1,
            phases: request.phases,
            class_weights: None,
            webhook: None,
        };
        if !spec.phases.is_empty() {
            train::validate(&spec)?;
        }
        train::summarize(&spec.model, &spec.input, &spec.phases)
    })
    .await??;
    Ok(Json(summary))
}
