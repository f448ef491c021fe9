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
    // Named only by `value_type` in query parameters, which utoipa-axum does not collect.
    components(schemas(crate::train::WeightsFormat, crate::http::evaluation::EvaluatedSet, crate::http::export::ExportFormat, crate::jobs::WebhookPayload)),
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

/// Documents, on every operation, the answers that come from the extractors and the token
/// check rather than the handler: one rule per extractor, so no handler can forget one.
///
/// Applied to the assembled document (the paths come from the routes, after `ApiDoc`'s own
/// modifiers have run).
struct SharedRejections;

impl utoipa::Modify for SharedRejections {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::Operation;
        use utoipa::openapi::security::SecurityRequirement;

        fn add(operation: &mut Operation, status: &str, description: &str) {
            use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
            let problem = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
            operation.responses.responses.entry(status.to_owned()).or_insert_with(|| {
                ResponseBuilder::new()
                    .description(description)
                    .content("application/problem+json", problem)
                    .build()
                    .into()
            });
        }

        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                // `super::json::Json`: the content type, the syntax, then the shape.
                let json_body =
                    operation.request_body.as_ref().is_some_and(|body| body.content.contains_key("application/json"));
                if json_body {
                    add(operation, "400", "The body is not JSON, or could not be read");
                    add(operation, "415", "The body's Content-Type is not application/json");
                    add(operation, "422", "JSON of the wrong shape; `field` names where");
                }
                // `super::path::Path`, `super::query::Query` and the headers each handler reads.
                if operation.parameters.as_ref().is_some_and(|parameters| !parameters.is_empty()) {
                    add(operation, "400", "A parameter that does not parse; `field` names it");
                }
                // `super::auth::require_token`, when the server has API tokens.
                if !super::auth::is_public(path) {
                    add(operation, "401", "No valid bearer token (when the server has API tokens)");
                    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
                    operation.security = Some(vec![bearer, SecurityRequirement::default()]);
                }
            }
        }
    }
}

/// The document as pretty JSON with a trailing newline (the committed file's form).
pub fn document() -> String {
    // The upload limit only sets body-limit layers; it is not part of the document.
    let (_, mut openapi) = super::api_routes(0).split_for_parts();
    utoipa::Modify::modify(&SharedRejections, &mut openapi);
    let mut value = serde_json::to_value(&openapi).expect("the OpenAPI document serialises");
    describe_event_streams(&mut value);
    let mut json = serde_json::to_string_pretty(&value).expect("the OpenAPI document serialises");
    json.push('\n');
    json
}

/// An event stream's `schema` describes one message as it is on the wire (OpenAPI 3.1, as
/// schemathesis reads it): `event` the tag, `id` the sequence number, and `data` a string of
/// JSON whose content is the variant's payload (`contentMediaType` + `contentSchema`).
///
/// The handlers document the stream with the typed payload enum (`EventPayload`: tag + object);
/// this rewrites each such response to `SseMessage`, made from that enum's variants. Done on the
/// JSON because utoipa has no `contentSchema`.
fn describe_event_streams(document: &mut serde_json::Value) {
    use serde_json::{json, Value};
    const NAME: &str = "SseMessage";
    let mut payloads = Vec::new();
    if let Some(paths) = document["paths"].as_object_mut() {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
            let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            for response in responses.values_mut() {
                // `get_mut`, not indexing: indexing a missing key inserts it.
                let schema = response
                    .get_mut("content")
                    .and_then(|content| content.get_mut("text/event-stream"))
                    .and_then(|stream| stream.get_mut("schema"));
                let Some(schema) = schema else { continue };
                if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
                    payloads.push(reference.rsplit('/').next().unwrap_or_default().to_owned());
                    *schema = json!({ "$ref": format!("#/components/schemas/{NAME}") });
                }
            }
        }
    }
    payloads.dedup();
    assert!(payloads.len() <= 1, "one event payload type for every stream, got {payloads:?}");
    let Some(payload) = payloads.pop() else { return };
    let schemas = &mut document["components"]["schemas"];
    let variants: Vec<Value> = schemas[&payload]["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|variant| {
            json!({
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": variant["properties"]["event"],
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": variant["properties"]["data"],
                    },
                    "id": {
                        "type": "string",
                        "pattern": "^[0-9]+$",
                        "description": "The per-job sequence number; absent on the final `dropped` and `shutdown` messages",
                    },
                },
            })
        })
        .collect();
    schemas[NAME] = json!({
        "description": format!("One Server-Sent Events message: `event:` and `data:` are the tag and the JSON content of one `{payload}`"),
        "oneOf": variants,
    });
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
