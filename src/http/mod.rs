//! The HTTP API: one router built from per-resource route sets, shared state, and the
//! middleware that logs each request (and the cause of any 5xx) once.

mod checkpoints;
mod datasets;
pub mod error;
mod events;
mod health;
mod jobs;
pub mod json;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::datasets::ImportLimits;
use crate::jobs::Jobs;

pub use error::ApiError;

/// Everything handlers share; cheap to clone (one `Arc` inside).
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub jobs: Arc<Jobs>,
    pub uploads_dir: std::path::PathBuf,
    pub max_upload_bytes: u64,
    pub import_limits: ImportLimits,
    pub sse_keepalive: Duration,
}

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// The whole API; no I/O happens here.
pub fn router(state: AppState) -> Router {
    let max_upload = usize::try_from(state.max_upload_bytes).unwrap_or(usize::MAX);
    Router::new()
        .merge(health::routes())
        .merge(openapi::routes())
        .merge(datasets::routes(max_upload))
        .merge(jobs::routes())
        .merge(events::routes())
        .merge(checkpoints::routes())
        .fallback(|uri: axum::http::Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(log_server_errors))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
