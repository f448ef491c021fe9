//! `GET /v1/jobs/{id}/events`: Server-Sent Events. Replays the stored history after
//! `Last-Event-ID`, then follows live, and ends after the job's `end` event.
//!
//! It subscribes to the live channel *before* reading history, and skips anything at or below
//! the last id sent, so an event stored while the replay runs is neither lost nor sent twice.
//! A subscriber that falls behind the channel catches up from the database.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::error::{ApiError, Problem};
use super::jobs::load_job;
use super::AppState;
use crate::jobs::{history_after, JobEvent};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/jobs/{id}/events", get(stream_job_events))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsParams {
    /// Same as the `Last-Event-ID` header (which wins when both are given): only events after it.
    pub last_event_id: Option<String>,
}

const PAGE: i64 = 500;

/// Follow a job live (Server-Sent Events).
///
/// Event types: `state`, `phase`, `step`, `epoch`, `checkpoint`, `end`; each `data:` is one JSON
/// object and each `id:` the per-job sequence number. Reconnect with `Last-Event-ID` to get
/// exactly the events after it. The stream ends after `end`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "stream_job_events",
    params(("id" = String, Path, description = "Job id"), EventsParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Last-Event-ID is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream_job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<EventsParams>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("invalid").to_owned());
    let last_event_id = match header.or(params.last_event_id) {
        None => 0,
        Some(raw) if raw.trim().is_empty() => 0,
        Some(raw) => raw.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| ApiError::BadRequest {
            code: "invalid_last_event_id",
            detail: format!("Last-Event-ID must be a non-negative integer, got {raw:?}"),
            field: Some("Last-Event-ID".into()),
        })?,
    };
    load_job(&state, &id).await?;
    let keepalive = state.sse_keepalive;
    Ok(Sse::new(job_events(state, id, last_event_id)).keep_alive(KeepAlive::new().interval(keepalive)))
}

fn to_sse(event: &JobEvent) -> Event {
    Event::default().id(event.id.to_string()).event(event.event.clone()).data(event.data.to_string())
}

fn job_events(state: AppState, job_id: String, mut last: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let mut live = state.jobs.hub.subscribe();
        let shutdown = state.jobs.shutdown.clone();
        // Replay (and, after a lag, catch up) from the database.
        let mut catch_up = true;
        loop {
            if catch_up {
                loop {
                    let page = match history_after(&state.jobs.pool, &job_id, last, PAGE).await {
                        Ok(page) => page,
                        Err(error) => {
                            tracing::error!(%job_id, %error, "reading event history failed; closing the stream");
                            return;
                        }
                    };
                    let full = page.len() as i64 == PAGE;
                    for event in page {
                        last = event.id;
                        yield Ok(to_sse(&event));
                        if event.is_end() {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                catch_up = false;
            }
            let received = tokio::select! {
                received = live.recv() => received,
                _ = shutdown.cancelled() => return,
            };
            match received {
                Ok(event) if event.job_id == job_id && event.id > last => {
                    if event.id > last + 1 {
                        // A gap: fetch what is missing from the database, in order.
                        catch_up = true;
                        continue;
                    }
                    last = event.id;
                    yield Ok(to_sse(&event));
                    if event.is_end() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(%job_id, skipped, "SSE subscriber lagged; catching up from the database");
                    catch_up = true;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
