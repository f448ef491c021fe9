//! Process-wide counters for `/metrics`: SSE subscribers, dropped subscribers, upload bytes and
//! training steps. Counting only; the Prometheus text is written in `http::metrics`.
//!
//! Steps are counted by following the event hub (each `step` event carries the job's
//! `global_step`), so the training code and the job runner know nothing of metrics.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::jobs::EventHub;

/// Window over which `steps_per_second` is averaged.
const RATE_WINDOW: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Telemetry {
    sse_subscribers: AtomicI64,
    sse_dropped: AtomicU64,
    upload_bytes: AtomicU64,
    steps: AtomicU64,
    /// (when, steps) samples of the last `RATE_WINDOW`.
    recent_steps: Mutex<VecDeque<(Instant, u64)>>,
}

/// Counts one open SSE stream while it lives.
pub struct SubscriberGuard(Arc<Telemetry>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.sse_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn subscriber(self: &Arc<Self>) -> SubscriberGuard {
        self.sse_subscribers.fetch_add(1, Ordering::Relaxed);
        SubscriberGuard(self.clone())
    }

    pub fn sse_subscribers(&self) -> i64 {
        self.sse_subscribers.load(Ordering::Relaxed)
    }

    pub fn subscriber_dropped(&self) {
        self.sse_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sse_dropped(&self) -> u64 {
        self.sse_dropped.load(Ordering::Relaxed)
    }

    pub fn add_upload_bytes(&self, bytes: u64) {
        self.upload_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn upload_bytes(&self) -> u64 {
        self.upload_bytes.load(Ordering::Relaxed)
    }

    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    fn add_steps(&self, steps: u64, now: Instant) {
        self.steps.fetch_add(steps, Ordering::Relaxed);
        let mut recent = self.recent_steps.lock().expect("telemetry poisoned");
        recent.push_back((now, steps));
        while recent.front().is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW) {
            recent.pop_front();
        }
    }

    /// Training steps per second over the last 30 s (all jobs of this process).
    pub fn steps_per_second(&self) -> f64 {
        let now = Instant::now();
        let recent = self.recent_steps.lock().expect("telemetry poisoned");
        let steps: u64 = recent.iter().filter(|(at, _)| now.duration_since(*at) <= RATE_WINDOW).map(|(_, n)| n).sum();
        steps as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Follows the hub and counts training steps until `shutdown`.
    pub fn follow_steps(self: Arc<Self>, hub: &EventHub, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mut live = hub.subscribe();
        tokio::spawn(async move {
            // The last global step seen per running job; a job seen for the first time counts
            // one step (its earlier steps, if resumed, were counted by an earlier process).
            let mut last: HashMap<String, u64> = HashMap::new();
            loop {
                let event = tokio::select! {
                    event = live.recv() => event,
                    _ = shutdown.cancelled() => return,
                };
                match event {
                    Ok(event) if event.event == "step" => {
                        let Some(step) = event.data.get("global_step").and_then(|v| v.as_u64()) else { continue };
                        let previous = last.insert(event.job_id.clone(), step);
                        let delta = previous.map_or(1, |p| step.saturating_sub(p));
                        if delta > 0 {
                            self.add_steps(delta, Instant::now());
                        }
                    }
                    Ok(event) if event.is_end() => {
                        last.remove(&event.job_id);
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }
}
