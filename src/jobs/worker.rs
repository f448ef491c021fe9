//! Workers: each takes the oldest queued job, trains it, records the result, and waits for
//! a wake-up or a poll tick. Training itself runs on a blocking thread, so a worker is a
//! lightweight task and the API stays responsive.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument;

use super::Jobs;

/// A poll tick covers a missed wake-up (e.g. a job queued by another process on the same file).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

pub fn spawn_workers(jobs: Arc<Jobs>, count: usize) -> Vec<JoinHandle<()>> {
    (0..count).map(|index| tokio::spawn(worker_loop(jobs.clone(), index))).collect()
}

async fn worker_loop(jobs: Arc<Jobs>, index: usize) {
    tracing::debug!(worker = index, "worker started");
    loop {
        if jobs.shutdown.is_cancelled() {
            break;
        }
        // Register for the wake-up before looking at the queue, so a job queued in between
        // is not missed.
        let notified = jobs.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match jobs.claim_next().await {
            Ok(Some(claimed)) => {
                // The span follows the future across its awaits (an entered guard would not).
                let span = tracing::info_span!("job", job_id = %claimed.job.id, attempt = claimed.job.attempts);
                jobs.run_claimed(claimed).instrument(span).await;
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::error!(worker = index, %error, "claiming a job failed"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = jobs.shutdown.cancelled() => break,
        }
    }
    tracing::debug!(worker = index, "worker stopped");
}
