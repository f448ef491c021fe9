//! `GET /v1/jobs/{id}/events`: Server-Sent Events. Replays the stored history after
//! `Last-Event-ID`, then follows live, and ends after the job's `end` event.
//!
//! It subscribes to the live channel *before* reading history, and skips anything at or below
//! the last id sent, so an event stored while the replay runs is neither lost nor sent twice.
//!
//! A subscriber that reads too slowly is dropped rather than buffered: the channel is one
//! bounded ring shared by all subscribers, and a subscriber whose connection has not taken the
//! events while more than `sse_max_lag_events` (of any job) went by gets a final `dropped` event
//! and its stream ends. Nothing waits for it, so it can slow neither the job nor anyone else;
//! it can reconnect with `Last-Event-ID` and replay what it missed from the database.
//! On shutdown every stream ends with a final `shutdown` event. Neither final event has an
//! `id:`, so the client's Last-Event-ID stays at the last real event.

use std::convert::Infallible;

use axum::extract::State;

use super::path::Path;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ErrorCode, Problem};
use super::jobs::load_job;
use super::query::Query;
use super::AppState;
use crate::jobs::{history_after, EventPayload, JobEvent, StreamClosed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream_job_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Same as the `Last-Event-ID` header (which wins when both are given): only events after it.
    #[param(pattern = r"^[0-9]{0,18}$")]
    pub last_event_id: Option<String>,
}

const PAGE: i64 = 500;

/// Follow a job live (Server-Sent Events).
///
/// Event types: `state`, `phase`, `step`, `epoch`, `checkpoint`, `end`; each `data:` is one JSON
/// object and each `id:` the per-job sequence number. Reconnect with `Last-Event-ID` to get
/// exactly the events after it. The stream ends after `end` (at once, empty, for a
/// `Last-Event-ID` at or past a finished job's `end`), or with a final `dropped` (the
/// client read too slowly) or `shutdown` event (no `id:`; `data` has `reason` and
/// `last_event_id`): reconnect with `Last-Event-ID` to continue. With API tokens configured,
/// a stream token from `POST /v1/stream-tokens` is accepted as `?access_token=`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", operation_id = "stream_job_events",
    params(("id" = String, Path, description = "Job id"), EventsParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^[0-9]{0,18}$", description = "Resume after this event id (empty: from the start)"),
        ("access_token" = Option<String>, Query, description = "A stream token from POST /v1/stream-tokens (for EventSource, which cannot send headers)")),
    responses(
        (status = 200, description = "An event stream: each message's `event:` and `data:` are the tag and the content of one `EventPayload`", content_type = "text/event-stream", body = EventPayload),
        (status = 400, description = "Last-Event-ID is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer or stream token (when tokens are configured)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream_job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<EventsParams>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    // Both are checked when both are given (a bad one is refused even where the other wins).
    let query = params.last_event_id.as_deref().map(|raw| parse_last_event_id(raw, "last_event_id")).transpose()?;
    let header = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(parse_last_event_id(value.to_str().unwrap_or("\u{fffd}"), "Last-Event-ID")?),
    };
    let last_event_id = header.or(query).unwrap_or(0);
    load_job(&state, &id).await?;
    let keepalive = state.sse_keepalive;
    Ok(Sse::new(job_events(state, id, last_event_id)).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// The largest id accepted has 18 digits (the schema's pattern: an `i64` always holds it).
const MAX_ID_DIGITS: usize = 18;

/// A `Last-Event-ID` as the schema states it: empty (from the start) or up to 18 digits.
fn parse_last_event_id(raw: &str, field: &str) -> Result<i64, ApiError> {
    if raw.is_empty() {
        return Ok(0);
    }
    if raw.len() > MAX_ID_DIGITS || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest {
            code: ErrorCode::InvalidLastEventId,
            detail: format!(
                "{field} must be empty or a non-negative integer of at most {MAX_ID_DIGITS} digits, got {raw:?}"
            ),
            field: Some(field.into()),
        });
    }
    Ok(raw.parse().unwrap_or(0))
}

fn to_sse(event: &JobEvent) -> Event {
    Event::default().id(event.id.to_string()).event(event.event.clone()).data(event.data.to_string())
}

/// A final event without an id (`dropped` or `shutdown`): why the stream ends, and where to
/// resume.
fn final_event(closed: fn(StreamClosed) -> EventPayload, reason: String, last: i64) -> Event {
    let event = Event::default().retry(std::time::Duration::from_secs(2));
    match closed(StreamClosed { reason, last_event_id: last }).to_parts() {
        Ok((kind, data)) => event.event(kind).data(data.to_string()),
        Err(error) => {
            // Plain data always encodes; should it not, the stream still ends.
            tracing::error!(%error, "encoding the final event of a stream failed");
            event.comment("closed")
        }
    }
}

fn job_events(state: AppState, job_id: String, mut last: i64) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let _counted = state.telemetry.subscriber();
        let mut live = state.jobs.hub.subscribe();
        let shutdown = state.jobs.shutdown.clone();
        let max_lag = state.sse_max_lag_events;
        let too_slow = |last: i64| {
            state.telemetry.subscriber_dropped();
            tracing::info!(%job_id, last_event_id = last, max_lag, "SSE subscriber too slow; dropped");
            final_event(EventPayload::Dropped, format!("too slow: more than {max_lag} events behind; reconnect with Last-Event-ID"), last)
        };
        // Replay from the database (and fill a gap between the replay and the live channel).
        let mut catch_up = true;
        loop {
            if catch_up {
                // Read before the replay: a job that had ended by then has its `end` event among
                // what the replay reads (it is stored with the final state), so a replay without
                // it means the client is past the end already, and nothing more will come.
                let ended = match crate::db::jobs::get(&state.jobs.pool, &job_id).await {
                    Ok(job) => job.is_some_and(|job| job.state.is_terminal()),
                    Err(error) => {
                        tracing::error!(%job_id, %error, "reading the job failed; closing the stream");
                        return;
                    }
                };
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
                if ended {
                    return;
                }
                catch_up = false;
            }
            if live.len() > max_lag {
                yield Ok(too_slow(last));
                return;
            }
            let received = tokio::select! {
                received = live.recv() => received,
                _ = shutdown.cancelled() => {
                    yield Ok(final_event(EventPayload::Shutdown, "the server is shutting down; reconnect with Last-Event-ID".to_owned(), last));
                    return;
                }
            };
            match received {
                Ok(event) if event.job_id == job_id && event.id > last => {
                    if event.id > last + 1 {
                        // A gap (stored while the replay ran): fetch what is missing, in order.
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
                Err(RecvError::Lagged(_)) => {
                    yield Ok(too_slow(last));
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}
