//! Running one claimed job: gathering its inputs, training on a blocking thread, persisting
//! every event before it is broadcast, and recording how it ended.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::runtime::Handle;

use super::{EventKind, JobState, Jobs, JobsError};
use crate::db::{self, jobs::JobRow};
use crate::train::{
    self, Control, JobSpec, Observer, ResumeFrom, Sample, StopReason, TrainError, TrainEvent, TrainJob, TrainOutcome,
};

/// How a run ended, before it is recorded.
enum Ending {
    Finished(TrainOutcome),
    Failed(String),
    Canceled,
    /// Interrupted by shutdown: back to the queue.
    Requeued,
}

impl Jobs {
    pub(super) async fn run_claimed(self: &Arc<Self>, job: JobRow) {
        let job_id = job.id.clone();
        let span = tracing::info_span!("job", job_id = %job_id, attempt = job.attempts);
        let _enter = span.enter();
        let control = Arc::new(Control::new());
        self.running.lock().expect("running map poisoned").insert(job_id.clone(), control.clone());
        // A shutdown that began while this job was being claimed must still reach it.
        if self.shutdown.is_cancelled() {
            control.request_stop(StopReason::Shutdown);
        }
        tracing::info!("job started");
        let ending = match self.prepare(&job).await {
            Ok(train_job) => self.train(job_id.clone(), train_job, control).await,
            Err(error) => Ending::Failed(error.to_string()),
        };
        self.running.lock().expect("running map poisoned").remove(&job_id);
        if let Err(error) = self.record_ending(&job_id, ending).await {
            tracing::error!(%error, "recording the end of a job failed");
        }
    }

    /// Everything the training code needs, from the database and the data directory.
    async fn prepare(&self, job: &JobRow) -> Result<TrainJob, JobsError> {
        let spec: JobSpec =
            serde_json::from_str(&job.spec).map_err(|e| JobsError::Internal(format!("stored spec: {e}")))?;
        let (classes, samples) = self.samples_of(&spec.dataset_id).await?;
        let validation_samples = match &spec.validation_dataset_id {
            Some(id) => Some(self.samples_of(id).await?.1),
            None => None,
        };
        let initial_weights = self
            .initial_weights_of(&spec)
            .await
            .map_err(|e| JobsError::Internal(format!("initial weights: {e}")))?
            .map(|(path, format)| train::InitialWeights { path, format });
        let resume = self.resume_point(&job.id).await?;
        let resumed_from =
            resume.as_ref().map(|r| json!({"phase_index": r.state.phase_index, "epoch": r.state.epochs_done}));
        self.hub
            .emit(
                &self.pool,
                &job.id,
                EventKind::State,
                json!({"state": JobState::Running, "attempt": job.attempts, "resumed_from": resumed_from}),
            )
            .await?;
        Ok(TrainJob {
            spec,
            classes,
            samples,
            validation_samples,
            initial_weights,
            resume,
            checkpoint_dir: self.paths.checkpoints.join(&job.id),
        })
    }

    async fn samples_of(&self, dataset_id: &str) -> Result<(Vec<String>, Vec<Sample>), JobsError> {
        let dir = self.paths.datasets.join(dataset_id);
        let (classes, files) = tokio::task::spawn_blocking(move || crate::datasets::list_samples(&dir))
            .await
            .map_err(|e| JobsError::Internal(e.to_string()))?
            .map_err(|e| JobsError::Internal(format!("dataset {dataset_id}: {e}")))?;
        let samples = files.into_iter().map(|(path, label)| Sample { path, label }).collect();
        Ok((classes, samples))
    }

    /// The newest checkpoint that still has its optimizer state, if any.
    async fn resume_point(&self, job_id: &str) -> Result<Option<ResumeFrom>, JobsError> {
        let rows = db::checkpoints::list_for_job(&self.pool, job_id).await?;
        let Some(last) = rows.iter().rev().find(|r| r.optimizer_path.is_some()) else {
            return Ok(None);
        };
        let Ok(state) = serde_json::from_str::<train::ResumeState>(&last.resume_state) else {
            tracing::warn!(checkpoint_id = %last.id, "unreadable resume state; restarting from the beginning");
            return Ok(None);
        };
        let phase_best_weights = super::retention::monitored_best_of_each_phase(&rows)
            .get(&last.phase_index)
            .map(|r| PathBuf::from(&r.path));
        Ok(Some(ResumeFrom {
            weights: PathBuf::from(&last.path),
            optimizer: PathBuf::from(last.optimizer_path.as_deref().unwrap_or_default()),
            state,
            phase_best_weights,
        }))
    }

    async fn train(self: &Arc<Self>, job_id: String, train_job: TrainJob, control: Arc<Control>) -> Ending {
        let jobs = self.clone();
        let handle = Handle::current();
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let phase_names = train_job.spec.phases.iter().map(|p| p.name.clone()).collect();
            let mut recorder = Recorder { jobs, job_id, handle, phase_names, control: control.clone(), failure: None };
            let result = train::run(&train_job, &control, &mut recorder);
            (result, recorder.failure)
        })
        .await;
        match result {
            Err(join_error) => Ending::Failed(format!("training panicked: {}", panic_message(join_error))),
            Ok((_, Some(failure))) => Ending::Failed(failure),
            Ok((Ok(outcome), None)) => Ending::Finished(outcome),
            Ok((Err(TrainError::Stopped(StopReason::Cancel)), None)) => Ending::Canceled,
            Ok((Err(TrainError::Stopped(StopReason::Shutdown)), None)) => Ending::Requeued,
            Ok((Err(error), None)) => Ending::Failed(error.to_string()),
        }
    }

    async fn record_ending(&self, job_id: &str, ending: Ending) -> Result<(), JobsError> {
        let now = db::now();
        match ending {
            Ending::Requeued => {
                db::jobs::transition(&self.pool, job_id, JobState::Running, JobState::Queued, None, None).await?;
                self.hub
                    .emit(&self.pool, job_id, EventKind::State, json!({"state": JobState::Queued, "reason": "the service is shutting down; the job resumes from its last checkpoint"}))
                    .await?;
                tracing::info!("job interrupted by shutdown; queued again");
                return Ok(());
            }
            Ending::Finished(outcome) => {
                if let Some(test) = &outcome.test {
                    db::jobs::set_test_metrics(&self.pool, job_id, &json!(test).to_string()).await?;
                }
                if let Some(weights) = &outcome.weights {
                    let path = weights.path.to_string_lossy();
                    db::jobs::set_final_weights(&self.pool, job_id, &path, weights.size as i64, &weights.sha256)
                        .await?;
                }
                db::jobs::transition(&self.pool, job_id, JobState::Running, JobState::Succeeded, Some(now), None)
                    .await?;
                self.hub.emit(&self.pool, job_id, EventKind::State, json!({"state": JobState::Succeeded})).await?;
                self.hub
                    .emit(&self.pool, job_id, EventKind::End, json!({"state": JobState::Succeeded, "test": outcome.test, "validation": outcome.validation, "error": null}))
                    .await?;
                tracing::info!(test = ?outcome.test, "job succeeded");
            }
            Ending::Canceled => {
                db::jobs::transition(&self.pool, job_id, JobState::Running, JobState::Canceled, Some(now), None)
                    .await?;
                self.hub.emit(&self.pool, job_id, EventKind::State, json!({"state": JobState::Canceled})).await?;
                self.hub
                    .emit(
                        &self.pool,
                        job_id,
                        EventKind::End,
                        json!({"state": JobState::Canceled, "test": null, "validation": null, "error": null}),
                    )
                    .await?;
                tracing::info!("job canceled");
            }
            Ending::Failed(error) => {
                db::jobs::transition(&self.pool, job_id, JobState::Running, JobState::Failed, Some(now), Some(&error))
                    .await?;
                self.hub
                    .emit(&self.pool, job_id, EventKind::State, json!({"state": JobState::Failed, "error": error}))
                    .await?;
                self.hub
                    .emit(
                        &self.pool,
                        job_id,
                        EventKind::End,
                        json!({"state": JobState::Failed, "test": null, "validation": null, "error": error}),
                    )
                    .await?;
                tracing::warn!(%error, "job failed");
            }
        }
        Ok(())
    }

    /// Persists one training event (and what it implies for the job row), then broadcasts it.
    async fn record_train_event(
        &self,
        job_id: &str,
        event: &TrainEvent,
        phase_names: &[String],
    ) -> Result<(), JobsError> {
        let mut data = serde_json::to_value(event).map_err(|e| JobsError::Internal(e.to_string()))?;
        if let Value::Object(map) = &mut data {
            map.remove("kind");
        }
        let phase_name = |index: usize| phase_names.get(index).cloned().unwrap_or_default();
        let (kind, data) = match event {
            TrainEvent::DataReady { .. } => {
                (EventKind::State, with(data, [("state", json!(JobState::Running)), ("stage", json!("data_ready"))]))
            }
            TrainEvent::PhaseStarted { phase_index, name, .. } => {
                db::jobs::set_progress(&self.pool, job_id, *phase_index as i64, name, 0).await?;
                (EventKind::Phase, with(data, [("status", json!("started"))]))
            }
            TrainEvent::PhaseEnded { .. } => (EventKind::Phase, with(data, [("status", json!("ended"))])),
            TrainEvent::Step { phase_index, .. } => {
                let data = with(data, [("phase", json!(phase_name(*phase_index)))]);
                db::jobs::set_latest_metrics(&self.pool, job_id, &data.to_string()).await?;
                (EventKind::Step, data)
            }
            TrainEvent::EpochEnded { phase_index, epoch, .. } => {
                let data = with(data, [("phase", json!(phase_name(*phase_index)))]);
                db::jobs::set_progress(
                    &self.pool,
                    job_id,
                    *phase_index as i64,
                    &phase_name(*phase_index),
                    i64::from(*epoch),
                )
                .await?;
                db::jobs::set_latest_metrics(&self.pool, job_id, &data.to_string()).await?;
                (EventKind::Epoch, data)
            }
            TrainEvent::CheckpointWritten { phase_index, epoch, weights, optimizer, validation, resume } => {
                let id = uuid::Uuid::now_v7().to_string();
                let row = db::checkpoints::CheckpointRow {
                    id: id.clone(),
                    job_id: job_id.to_owned(),
                    phase_index: *phase_index as i64,
                    phase_name: phase_name(*phase_index),
                    epoch: i64::from(*epoch),
                    global_step: resume.global_step as i64,
                    val_loss: validation.map(|m| m.loss),
                    val_accuracy: validation.map(|m| m.accuracy),
                    path: weights.path.to_string_lossy().into_owned(),
                    size_bytes: weights.size as i64,
                    sha256: weights.sha256.clone(),
                    optimizer_path: Some(optimizer.path.to_string_lossy().into_owned()),
                    resume_state: json!(resume).to_string(),
                    created_at: db::now(),
                };
                db::checkpoints::insert(&self.pool, &row).await?;
                self.apply_retention(job_id).await?;
                let data = json!({
                    "id": id,
                    "phase_index": phase_index,
                    "phase": phase_name(*phase_index),
                    "epoch": epoch,
                    "validation": validation,
                    "size": weights.size,
                    "sha256": weights.sha256,
                });
                (EventKind::Checkpoint, data)
            }
        };
        self.hub.emit(&self.pool, job_id, kind, data).await?;
        Ok(())
    }
}

/// Adds fields to a JSON object.
fn with<const N: usize>(mut data: Value, fields: [(&str, Value); N]) -> Value {
    if let Value::Object(map) = &mut data {
        for (key, value) in fields {
            map.insert(key.to_owned(), value);
        }
    }
    data
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned()),
        Err(error) => error.to_string(),
    }
}

/// The training code's observer: stores each event before returning, so subscribers only ever
/// see stored events and a resume never lacks one that was shown.
struct Recorder {
    jobs: Arc<Jobs>,
    job_id: String,
    handle: Handle,
    phase_names: Vec<String>,
    control: Arc<Control>,
    failure: Option<String>,
}

impl Observer for Recorder {
    fn on_event(&mut self, event: &TrainEvent) {
        if self.failure.is_some() {
            return;
        }
        let result = self.handle.block_on(self.jobs.record_train_event(&self.job_id, event, &self.phase_names));
        if let Err(error) = result {
            tracing::error!(%error, "recording a training event failed; stopping the job");
            self.failure = Some(format!("recording training progress failed: {error}"));
            self.control.request_stop(StopReason::Cancel);
        }
    }
}
