//! Liveness: answers as soon as the server accepts requests.

use axum::routing::get;
use axum::Router;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(get_health))
}

/// Liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The server accepts requests", body = String)))]
pub async fn get_health() -> &'static str {
    "ok"
}
