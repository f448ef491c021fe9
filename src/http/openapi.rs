//! The OpenAPI document, generated from the handlers and types; `openapi/openapi.json` is a
//! committed copy that a test keeps equal to it.

use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "tanuki", description = "A training-job service for transfer learning and fine-tuning of vision models."),
    paths(
        super::health::get_health,
        super::datasets::create_dataset,
        super::datasets::list_datasets,
        super::datasets::get_dataset,
        super::datasets::delete_dataset,
        super::jobs::create_job,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::cancel_job,
        super::jobs::get_job_metrics,
        super::jobs::get_job_model,
        super::events::stream_job_events,
        super::checkpoints::list_job_checkpoints,
        super::checkpoints::download_checkpoint_weights,
        super::checkpoints::download_job_weights,
        get_openapi,
    ),
    tags(
        (name = "datasets", description = "Image datasets, uploaded as archives of class folders"),
        (name = "jobs", description = "Training jobs: submit, follow, cancel"),
        (name = "checkpoints", description = "Checkpoint weights"),
        (name = "health", description = "Probes"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline (the committed file's form).
pub fn document() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(get_openapi))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "get_openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn get_openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}
