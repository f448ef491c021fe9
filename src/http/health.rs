//! Probes: liveness (`/healthz`, answers as soon as the server accepts requests) and readiness
//! (`/readyz`: the database answers and every worker is alive; it reports the disk's free space).

use std::time::Duration;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::json::Json;
use super::AppState;
use crate::disk;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_health)).routes(routes!(get_readiness))
}

/// Liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The server accepts requests", body = String)))]
pub async fn get_health() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: String,
    /// Workers whose task is alive, of `workers_configured`.
    pub workers_alive: usize,
    pub workers_configured: usize,
    /// The filesystem of the data directory (absent where it cannot be read). A full disk does
    /// not make the server unready: it still serves what it has stored.
    pub disk: Option<DiskView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiskView {
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// Readiness probe: the database answers `SELECT 1` and every worker is alive.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "get_readiness",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The database does not answer, a worker died, or shutting down", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_readiness(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if state.jobs.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&state.jobs.pool),
    )
    .await;
    match ping {
        Ok(Ok(1)) => {}
        Ok(Ok(_)) | Ok(Err(_)) => return Err(ApiError::Unavailable("the database does not answer".into())),
        Err(_) => return Err(ApiError::Unavailable("the database did not answer within 2 s".into())),
    }
    let alive = state.workers_alive();
    let configured = state.workers.len();
    if alive < configured {
        return Err(ApiError::Unavailable(format!("{} of {configured} workers have stopped", configured - alive)));
    }
    let disk = disk::space(&state.data_dir)
        .ok()
        .map(|space| DiskView { available_bytes: space.available_bytes, total_bytes: space.total_bytes });
    Ok(Json(Readiness { status: "ready".into(), workers_alive: alive, workers_configured: configured, disk }))
}
