//! The OpenAPI document, generated from the handlers and types; `openapi/openapi.json` is a
//! committed copy that a test keeps equal to it.
//!
//! [`ApiDoc`] holds what is not a path (title, tags, security scheme); the paths come from the
//! routes themselves (`super::api_routes`: every resource's `OpenApiRouter` with `routes!`), so a
//! documented route and a served one are the same list.

use std::sync::LazyLock;

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    info(title = "tanuki", description = "A training-job service for transfer learning and fine-tuning of vision models."),
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
    // The upload limit only sets body-limit layers; it is not part of the document.
    let (_, openapi) = super::api_routes(0).split_for_parts();
    let mut json = openapi.to_pretty_json().expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_openapi))
}

/// Built once: the routes do not change while the server runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(document);

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "get_openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn get_openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}
