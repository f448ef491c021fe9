//! The OpenAPI document, generated from the handlers and types; `openapi/openapi.json` is a
//! committed copy that a test keeps equal to it.

use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    info(title = "tanuki", description = "A training-job service for transfer learning and fine-tuning of vision models."),
    paths(
        super::health::get_health,
        super::health::get_readiness,
        super::metrics::get_metrics,
        super::auth::create_stream_token,
        super::datasets::create_dataset,
        super::datasets::list_datasets,
        super::datasets::get_dataset,
        super::datasets::delete_dataset,
        super::backbones::create_backbone,
        super::backbones::list_backbones,
        super::backbones::get_backbone,
        super::backbones::delete_backbone,
        super::jobs::create_job,
        super::jobs::list_jobs,
        super::jobs::get_job,
        super::jobs::cancel_job,
        super::jobs::get_job_metrics,
        super::jobs::get_job_model,
        super::models::summarize_model,
        super::predict::predict_job,
        super::events::stream_job_events,
        super::checkpoints::list_job_checkpoints,
        super::checkpoints::download_checkpoint_weights,
        super::checkpoints::download_job_weights,
        get_openapi,
    ),
    tags(
        (name = "datasets", description = "Image datasets, uploaded as archives of class folders"),
        (name = "backbones", description = "Architectures and uploaded pretrained weights"),
        (name = "jobs", description = "Training jobs: submit, follow, cancel"),
        (name = "models", description = "What a spec will train"),
        (name = "checkpoints", description = "Checkpoint weights"),
        (name = "health", description = "Probes and metrics"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// Documents the optional bearer token (on when `TANUKI_API_TOKENS` is set).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Required on every endpoint but /healthz and /readyz when the server has API tokens (TANUKI_API_TOKENS); the job events stream also takes a stream token as ?access_token="))
                    .build(),
            ),
        );
    }
}

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
