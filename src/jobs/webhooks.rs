//! Webhook deliveries: a job's end becomes a message in the `webhook_messages` outbox in the
//! transaction that records the end, and a dispatcher posts each message, signed, until the
//! receiver answers 2xx or the retry window closes, recording every attempt.
//!
//! Delivery is at least once: a process that dies mid-attempt leaves the message held until
//! `held_until`, then any dispatcher on the database tries it again under the same
//! `webhook-id`, which receivers dedupe by.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::SqliteConnection;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::{JobState, Jobs, JobsError};
use crate::db::{self, jobs::JobRow, webhooks::MessageRow};
use crate::job_state::FailureCode;
use crate::train::Metrics;
use crate::webhook::{DeliveryState, WebhookEventType};

/// How deliveries are retried (`tanuki --help` lists the flags that set them).
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// The wait after the first failed attempt; each later wait doubles, up to an hour.
    pub first_retry: Duration,
    /// No attempt starts later than this after the job ended; the message is then `failed`.
    pub retry_window: Duration,
    /// How long one attempt may take, connection to answer.
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_secs(5),
            retry_window: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(15),
        }
    }
}

/// The longest wait between two attempts.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);
/// Messages taken per pass, and attempts in flight at once.
const BATCH: i64 = 16;
const CONCURRENT_ATTEMPTS: usize = 8;
/// The longest sleep between passes when nothing is due (a safety net for a missed wake-up, or
/// a message queued by another process on the same database).
const IDLE_POLL: Duration = Duration::from_secs(30);

/// The body of every delivery (Standard Webhooks' `type`, `timestamp`, `data`).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPayload {
    #[serde(rename = "type")]
    pub event_type: WebhookEventType,
    /// When the job ended.
    pub timestamp: DateTime<Utc>,
    pub data: JobEnded,
}

/// The job as it ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEnded {
    pub job_id: String,
    pub name: Option<String>,
    pub state: JobState,
    pub error: Option<String>,
    pub error_code: Option<FailureCode>,
    /// Loss and accuracy of the final weights on the test set, when it succeeded with one.
    pub test_metrics: Option<Metrics>,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The job in the API (relative to the server's address).
    pub href: String,
}

fn event_type(state: JobState) -> Option<WebhookEventType> {
    match state {
        JobState::Succeeded => Some(WebhookEventType::JobSucceeded),
        JobState::Failed => Some(WebhookEventType::JobFailed),
        JobState::Canceled => Some(WebhookEventType::JobCanceled),
        JobState::Queued | JobState::Running => None,
    }
}

/// Writes the message announcing `job`'s end, if it has a webhook; called inside the
/// transaction that records the end. True when a message was written.
pub(super) async fn enqueue_end(tx: &mut SqliteConnection, job: &JobRow) -> Result<bool, JobsError> {
    let (Some(webhook), Some(event_type)) = (&job.spec.0.webhook, event_type(job.state)) else {
        return Ok(false);
    };
    let payload = WebhookPayload {
        event_type,
        timestamp: job.finished_at.unwrap_or_else(db::now),
        data: JobEnded {
            job_id: job.id.clone(),
            name: job.name.clone(),
            state: job.state,
            error: job.error.clone(),
            error_code: job.error_code,
            test_metrics: job.test_metrics.as_ref().map(|m| m.0),
            attempts: job.attempts,
            created_at: job.created_at,
            finished_at: job.finished_at,
            href: format!("/v1/jobs/{}", job.id),
        },
    };
    let body = serde_json::to_string(&payload).map_err(|e| JobsError::Internal(format!("webhook payload: {e}")))?;
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let message = db::webhooks::NewMessage {
        id: &id,
        job_id: &job.id,
        event_type,
        url: webhook.url.as_str(),
        payload: &body,
        created_at: db::now(),
    };
    db::webhooks::insert(tx, &message).await?;
    Ok(true)
}

/// The wait after failed attempt `attempt` (1-based): `first`, doubled each time, at most an hour.
fn backoff(first: Duration, attempt: i64) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
    first.saturating_mul(1 << doublings).min(MAX_RETRY_INTERVAL)
}

/// What one attempt came to.
struct Answer {
    status: Option<u16>,
    /// Why it failed; `None` on a 2xx.
    error: Option<String>,
}

impl Jobs {
    /// Starts the task that delivers webhook messages until shutdown.
    pub fn spawn_webhook_dispatcher(self: &Arc<Self>) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move { jobs.dispatch_loop().await })
    }

    async fn dispatch_loop(self: Arc<Self>) {
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tanuki/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "the webhook HTTP client could not be built; no webhooks are delivered");
                return;
            }
        };
        loop {
            // Registered before the queue is read, so a message written in between is not missed.
            let notified = self.webhook_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = tokio::select! {
                taken = self.deliver_due(&client) => taken,
                // Attempts in flight are dropped unrecorded; their messages are retried after
                // their hold, by this process's successor or another one.
                _ = self.shutdown.cancelled() => break,
            };
            if taken == BATCH as usize {
                continue;
            }
            let wait = match db::webhooks::next_due(&self.pool).await {
                Ok(Some(due)) => (due - db::now()).to_std().unwrap_or(Duration::ZERO).min(IDLE_POLL),
                Ok(None) => IDLE_POLL,
                Err(error) => {
                    tracing::error!(%error, "reading the webhook outbox failed");
                    IDLE_POLL
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        tracing::debug!("webhook dispatcher stopped");
    }

    /// Takes the messages due now and tries each once; returns how many it took.
    async fn deliver_due(&self, client: &reqwest::Client) -> usize {
        let now = db::now();
        let hold = self.webhook_settings.timeout + Duration::from_secs(10);
        let held_until = now + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::MAX);
        let messages = match db::webhooks::claim_due(&self.pool, now, held_until, BATCH).await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::error!(%error, "claiming webhook messages failed");
                return 0;
            }
        };
        let taken = messages.len();
        futures::stream::iter(messages)
            .for_each_concurrent(CONCURRENT_ATTEMPTS, |message| async move {
                let (id, job_id) = (message.id.clone(), message.job_id.clone());
                if let Err(error) = self.attempt(client, message).await {
                    tracing::error!(%error, message_id = %id, %job_id, "recording a webhook attempt failed");
                }
            })
            .await;
        taken
    }

    /// Posts one message once and records the attempt and what follows from it.
    async fn attempt(&self, client: &reqwest::Client, message: MessageRow) -> Result<(), JobsError> {
        let secret = db::jobs::get(&self.pool, &message.job_id).await?.and_then(|job| job.spec.0.webhook);
        let started_at = db::now();
        let clock = Instant::now();
        let answer = match secret {
            None => Answer { status: None, error: Some("the job has no webhook secret to sign with".into()) },
            Some(webhook) => {
                let timestamp = started_at.timestamp();
                let signature = webhook.secret.sign(&message.id, timestamp, message.payload.as_bytes());
                let request = client
                    .post(&message.url)
                    .timeout(self.webhook_settings.timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", &message.id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .body(message.payload.clone());
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        Answer { status: Some(response.status().as_u16()), error: None }
                    }
                    Ok(response) => Answer {
                        status: Some(response.status().as_u16()),
                        error: Some(format!("the receiver answered {}", response.status())),
                    },
                    Err(error) => Answer { status: None, error: Some(error_chain(&error)) },
                }
            }
        };
        let attempt = message.attempts + 1;
        let now = db::now();
        let (state, next) = if answer.error.is_none() {
            (DeliveryState::Delivered, None)
        } else {
            let wait = backoff(self.webhook_settings.first_retry, attempt);
            let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
            let window =
                chrono::Duration::from_std(self.webhook_settings.retry_window).unwrap_or(chrono::Duration::MAX);
            if next > message.created_at + window {
                (DeliveryState::Failed, None)
            } else {
                (DeliveryState::Pending, Some(next))
            }
        };
        let row = db::webhooks::AttemptRow {
            message_id: message.id.clone(),
            attempt,
            started_at,
            duration_ms: clock.elapsed().as_millis().min(i64::MAX as u128) as i64,
            status_code: answer.status.map(i64::from),
            error: answer.error.clone(),
        };
        let mut tx = self.pool.begin().await?;
        db::webhooks::insert_attempt(&mut *tx, &row).await?;
        db::webhooks::set_outcome(&mut *tx, &message.id, attempt, state, next).await?;
        tx.commit().await?;
        let (message_id, job_id) = (&message.id, &message.job_id);
        match (state, &answer.error) {
            (DeliveryState::Delivered, _) => tracing::info!(%message_id, %job_id, attempt, "webhook delivered"),
            (DeliveryState::Pending, Some(error)) => {
                tracing::warn!(%message_id, %job_id, attempt, %error, next_attempt_at = ?next, "webhook attempt failed")
            }
            (_, error) => {
                tracing::warn!(%message_id, %job_id, attempt, ?error, "webhook given up: the retry window closed")
            }
        }
        Ok(())
    }
}

/// An error with its causes ("error sending request: connection refused"): reqwest's own
/// message alone does not say what went wrong.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_up_to_an_hour() {
        let first = Duration::from_secs(5);
        let waits: Vec<u64> = (1..=4).map(|n| backoff(first, n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40]);
        assert_eq!(backoff(first, 11), MAX_RETRY_INTERVAL);
        assert_eq!(backoff(first, i64::MAX), MAX_RETRY_INTERVAL);
    }
}
