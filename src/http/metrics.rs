//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the job queue and the counters
//! in [`crate::telemetry`].

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::AppState;
use crate::disk;
use crate::jobs::JobState;
use crate::webhook::DeliveryState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_metrics))
}

/// Prometheus metrics.
///
/// Jobs by state, queue depth, training steps (total and per second), SSE subscribers, dropped
/// subscribers, uploaded bytes, live workers, webhook messages by delivery state, free and total
/// disk space of the data directory.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "get_metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "No valid bearer token (when tokens are configured)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // A read-only aggregate for monitoring; it has no counterpart among the per-table
    // statements in `db::jobs`.
    let counts: Vec<(JobState, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetch_all(&state.jobs.pool).await?;
    let count_of = |s: JobState| counts.iter().find(|(state, _)| *state == s).map_or(0, |(_, n)| *n);
    let t = &state.telemetry;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let by_state: Vec<(String, String)> =
        JobState::ALL.iter().map(|&s| (format!("{{state=\"{s}\"}}"), count_of(s).to_string())).collect();
    let by_state: Vec<(&str, String)> = by_state.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    metric("tanuki_jobs", "gauge", "Jobs by state.", &by_state);
    metric(
        "tanuki_queue_depth",
        "gauge",
        "Jobs waiting for a worker.",
        &[("", count_of(JobState::Queued).to_string())],
    );
    metric(
        "tanuki_jobs_training",
        "gauge",
        "Jobs training in this process now.",
        &[("", state.jobs.running_count().to_string())],
    );
    let webhooks: Vec<(DeliveryState, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM webhook_messages GROUP BY state")
            .fetch_all(&state.jobs.pool)
            .await?;
    let webhooks: Vec<(String, String)> = DeliveryState::ALL
        .iter()
        .map(|&s| {
            let n = webhooks.iter().find(|(state, _)| *state == s).map_or(0, |(_, n)| *n);
            (format!("{{state=\"{}\"}}", s.as_str()), n.to_string())
        })
        .collect();
    let webhooks: Vec<(&str, String)> = webhooks.iter().map(|(l, v)| (l.as_str(), v.clone())).collect();
    metric("tanuki_webhook_messages", "gauge", "Webhook messages by delivery state.", &webhooks);
    metric("tanuki_workers_alive", "gauge", "Worker tasks alive.", &[("", state.workers_alive().to_string())]);
    metric(
        "tanuki_train_steps_total",
        "counter",
        "Training steps (batches) run by this process.",
        &[("", t.steps().to_string())],
    );
    metric(
        "tanuki_train_steps_per_second",
        "gauge",
        "Training steps per second over the last 30 s.",
        &[("", format!("{:.3}", t.steps_per_second()))],
    );
    metric("tanuki_sse_subscribers", "gauge", "Open job event streams.", &[("", t.sse_subscribers().to_string())]);
    metric(
        "tanuki_sse_dropped_total",
        "counter",
        "Event streams ended because the client read too slowly.",
        &[("", t.sse_dropped().to_string())],
    );
    metric(
        "tanuki_upload_bytes_total",
        "counter",
        "Bytes of dataset archives received.",
        &[("", t.upload_bytes().to_string())],
    );
    if let Ok(space) = disk::space(&state.data_dir) {
        metric(
            "tanuki_disk_available_bytes",
            "gauge",
            "Bytes free for the server on the data directory's filesystem.",
            &[("", space.available_bytes.to_string())],
        );
        metric(
            "tanuki_disk_total_bytes",
            "gauge",
            "Size of the data directory's filesystem.",
            &[("", space.total_bytes.to_string())],
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}
