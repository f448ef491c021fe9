//! `GET /v1/jobs/{id}/webhooks`: a job's webhook deliveries and every attempt at each.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::jobs::load_job;
use super::json::Json;
use super::path::Path;
use super::AppState;
use crate::db;
use crate::webhook::{DeliveryState, WebhookEventType};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_job_webhooks))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobWebhooks {
    pub job_id: String,
    /// The spec's webhook URL; null when the job has none.
    pub url: Option<String>,
    /// Oldest first; one per final state the job reached (so at most one today).
    pub deliveries: Vec<Delivery>,
}

/// One message: the same body and `webhook-id` on every attempt.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` header.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: WebhookEventType,
    pub state: DeliveryState,
    pub created_at: DateTime<Utc>,
    /// When it is tried next, while `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The body posted (as JSON), exactly as signed.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub attempts: Vec<Attempt>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: i64,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// The receiver's HTTP status; null when none came (refused, timed out).
    pub status_code: Option<i64>,
    /// Why it failed; null when it was delivered.
    pub error: Option<String>,
}

/// A job's webhook deliveries, with every attempt: its status code or error, and when the
/// next is due.
#[utoipa::path(get, path = "/v1/jobs/{id}/webhooks", tag = "jobs", operation_id = "get_job_webhooks",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Deliveries", body = JobWebhooks),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_job_webhooks(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobWebhooks>, ApiError> {
    let job = load_job(&state, &id).await?;
    let pool = &state.jobs.pool;
    let messages = db::webhooks::messages_of_job(pool, &id).await?;
    let mut attempts = db::webhooks::attempts_of_job(pool, &id).await?;
    let mut deliveries = Vec::with_capacity(messages.len());
    for message in messages {
        let payload = serde_json::from_str(&message.payload)
            .map_err(|e| ApiError::Internal(format!("stored webhook payload {}: {e}", message.id)))?;
        let (own, rest): (Vec<_>, Vec<_>) = attempts.into_iter().partition(|a| a.message_id == message.id);
        attempts = rest;
        deliveries.push(Delivery {
            id: message.id,
            event_type: message.event_type,
            state: message.state,
            created_at: message.created_at,
            next_attempt_at: message.next_attempt_at,
            payload,
            attempts: own
                .into_iter()
                .map(|a| Attempt {
                    attempt: a.attempt,
                    started_at: a.started_at,
                    duration_ms: a.duration_ms,
                    status_code: a.status_code,
                    error: a.error,
                })
                .collect(),
        });
    }
    let url = job.spec.0.webhook.map(|w| String::from(w.url));
    Ok(Json(JobWebhooks { job_id: job.id, url, deliveries }))
}
