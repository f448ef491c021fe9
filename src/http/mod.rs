//! The HTTP API: one router built from per-resource route sets, shared state, and the
//! middleware that logs each request (and the cause of any 5xx) once.

pub mod auth;
mod backbones;
mod checkpoints;
mod dashboard;
mod datasets;
pub mod error;
mod error_code;
pub mod evaluation;
mod events;
pub mod export;
mod health;
mod idempotency;
mod jobs;
pub mod json;
mod metrics;
mod models;
pub mod openapi;
mod path;
mod predict;
mod query;
mod unread_body;
mod upload;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::catalog::Catalog;
use crate::jobs::Jobs;
use crate::telemetry::Telemetry;

pub use error::ApiError;

/// Everything handlers share; cheap to clone (one `Arc` inside).
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub jobs: Arc<Jobs>,
    /// Datasets and backbone weights (files and rows).
    pub catalog: Catalog,
    pub max_upload_bytes: u64,
    /// Where everything is stored: its free space is reported, and checked against uploads.
    pub data_dir: std::path::PathBuf,
    pub sse_keepalive: Duration,
    /// A live subscriber this many events behind is dropped (see `events`).
    pub sse_max_lag_events: usize,
    /// `None`: the API is open.
    pub auth: Option<auth::Auth>,
    /// Browser origins allowed by CORS; empty sends no CORS headers.
    pub cors_origins: Vec<String>,
    pub telemetry: Arc<Telemetry>,
    /// The worker tasks, for readiness.
    pub workers: Vec<tokio::task::AbortHandle>,
}

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl StateInner {
    pub fn workers_alive(&self) -> usize {
        self.workers.iter().filter(|w| !w.is_finished()).count()
    }
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// Every documented route, and the OpenAPI document they make together; no I/O happens here.
pub fn api_routes(max_upload: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(auth::routes())
        .merge(openapi::routes())
        .merge(datasets::routes(max_upload))
        .merge(backbones::routes(max_upload))
        .merge(jobs::routes())
        .merge(models::routes())
        .merge(predict::routes())
        .merge(evaluation::routes())
        .merge(export::routes())
        .merge(webhooks::routes())
        .merge(events::routes())
        .merge(checkpoints::routes())
}

/// The whole API; no I/O happens here.
pub fn router(state: AppState) -> Router {
    let max_upload = usize::try_from(state.max_upload_bytes).unwrap_or(usize::MAX);
    let cors = cors_layer(&state.cors_origins);
    let (api, _) = api_routes(max_upload).split_for_parts();
    let router = Router::new()
        // The dashboard's page and static files are for browsers, not API clients: deliberately
        // outside the OpenAPI document, so on a plain `Router`.
        .merge(dashboard::routes())
        .merge(api)
        .fallback(|uri: axum::http::Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(middleware::from_fn(log_server_errors))
        .layer(middleware::from_fn(unread_body::finish_or_close))
        .layer(TraceLayer::new_for_http());
    // Outermost, so a preflight is answered before the token check.
    match cors {
        Some(cors) => router.layer(cors).with_state(state),
        None => router.with_state(state),
    }
}

/// CORS for dashboards served from another origin; `None` when no origin is configured.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o.trim()).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("last-event-id")])
            .max_age(Duration::from_secs(600)),
    )
}

/// Logs the cause of a 5xx once, inside the request's span.
async fn log_server_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(cause) = response.extensions().get::<error::InternalCause>() {
        tracing::error!(%method, %path, status = %response.status(), cause = %cause.0, "request failed");
    }
    response
}
