//! Running one claimed job: gathering its inputs, training on a blocking thread, persisting
//! every event before it is broadcast, and recording how it ended.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::end::{Failure, JobEnd};
use super::event::{CheckpointEvent, EpochEvent, EventPayload, PhaseEvent, ResumedFrom, Stage, StateEvent, StepEvent};
use super::{hub, JobState, Jobs, JobsError};
use crate::db::{self, jobs::JobRow};
use crate::train::{self, Control, Observer, ResumeFrom, Sample, StopReason, TrainError, TrainEvent, TrainJob};

/// A job a worker took, its stop flag already registered.
pub(super) struct Claimed {
    pub job: JobRow,
    pub control: Arc<Control>,
}

/// How a run ended, before it is recorded.
enum Ending {
    /// Succeeded, failed or canceled.
    Ended(JobEnd),
    /// Interrupted by shutdown: back to the queue.
    Requeued,
}

impl Jobs {
    /// Takes the oldest queued job, marks it running and registers its stop flag in one step
    /// under the claim gate (which [`Jobs::cancel`] also holds), so a cancel never finds a job
    /// running in this process without a flag to set.
    pub(super) async fn claim_next(&self) -> Result<Option<Claimed>, JobsError> {
        let _gate = self.claim_gate.lock().await;
        let Some(job) = db::jobs::claim_next(&self.pool, db::now()).await? else {
            return Ok(None);
        };
        let control = Arc::new(Control::new());
        self.running.lock().expect("running map poisoned").insert(job.id.clone(), control.clone());
        // Checked after the flag is visible to `stop_running_for_shutdown`, so a shutdown that
        // began meanwhile reaches the job one way or the other.
        if self.shutdown.is_cancelled() {
            control.request_stop(StopReason::Shutdown);
        }
        Ok(Some(Claimed { job, control }))
    }

    /// Trains a claimed job and records how it ended. The caller attaches the job's span.
    pub(super) async fn run_claimed(self: &Arc<Self>, claimed: Claimed) {
        let Claimed { job, control } = claimed;
        let job_id = job.id.clone();
        tracing::info!("job started");
        let ending = match self.prepare(&job).await {
            Ok(train_job) => self.train(job_id.clone(), train_job, control).await,
            Err(error) => Ending::Ended(JobEnd::Failed(Failure::internal(error.to_string()))),
        };
        if let Err(error) = self.record_ending(&job_id, ending).await {
            tracing::error!(%error, "recording the end of a job failed");
        }
        // Only now: until its end is recorded, a cancel must still find the flag.
        self.running.lock().expect("running map poisoned").remove(&job_id);
    }

    /// Everything the training code needs, from the database and the data directory.
    async fn prepare(&self, job: &JobRow) -> Result<TrainJob, JobsError> {
        let spec = job.spec.0.clone();
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
            resume.as_ref().map(|r| ResumedFrom { phase_index: r.state.phase_index, epoch: r.state.epochs_done });
        let started = StateEvent::Started { state: JobState::Running, attempt: job.attempts, resumed_from };
        self.hub.emit(&self.pool, &job.id, &EventPayload::State(started)).await?;
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
        // Decoded with the row: an unreadable resume state fails the listing, and the job.
        let state = last.resume_state.0.clone();
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
            Err(join_error) => Ending::Ended(JobEnd::Failed(Failure::internal(format!(
                "training panicked: {}",
                panic_message(join_error)
            )))),
            Ok((_, Some(failure))) => Ending::Ended(JobEnd::Failed(failure)),
            Ok((Ok(outcome), None)) => Ending::Ended(JobEnd::Succeeded(Box::new(outcome))),
            Ok((Err(TrainError::Stopped(StopReason::Cancel)), None)) => Ending::Ended(JobEnd::Canceled),
            Ok((Err(TrainError::Stopped(StopReason::Shutdown)), None)) => Ending::Requeued,
            Ok((Err(error), None)) => Ending::Ended(JobEnd::Failed(Failure::from(&error))),
        }
    }

    async fn record_ending(&self, job_id: &str, ending: Ending) -> Result<(), JobsError> {
        match ending {
            Ending::Requeued => {
                let reason = "the service is shutting down; the job resumes from its last checkpoint";
                let requeued = StateEvent::Requeued { state: JobState::Queued, reason: reason.to_owned() };
                let mut tx = self.pool.begin().await?;
                if db::jobs::transition(&mut *tx, job_id, JobState::Running, JobState::Queued, None, None).await? {
                    let event = hub::store(&mut *tx, job_id, &EventPayload::State(requeued)).await?;
                    tx.commit().await?;
                    self.hub.publish(event);
                }
                tracing::info!("job interrupted by shutdown; queued again");
            }
            Ending::Ended(end) => {
                self.record_end(job_id, JobState::Running, &end).await?;
                match &end {
                    JobEnd::Succeeded(outcome) => tracing::info!(test = ?outcome.test, "job succeeded"),
                    JobEnd::Canceled => tracing::info!("job canceled"),
                    JobEnd::Failed(failure) => tracing::warn!(code = ?failure.code, error = %failure, "job failed"),
                }
            }
        }
        Ok(())
    }

    /// Persists one training event and what it implies for the job row (and, for a checkpoint,
    /// its row and the retention it triggers) in one transaction, then broadcasts it; files of
    /// superseded checkpoints are deleted only once that committed.
    async fn record_train_event(
        &self,
        job_id: &str,
        event: &TrainEvent,
        phase_names: &[String],
    ) -> Result<(), JobsError> {
        let phase_name = |index: usize| phase_names.get(index).cloned().unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        let mut superseded_files = Vec::new();
        // Every field is named (no `..`): a field the training loop adds must be placed here.
        let payload = match event {
            TrainEvent::DataReady { classes, train_images, validation_images, test_images, skipped_images } => {
                EventPayload::State(StateEvent::DataReady {
                    state: JobState::Running,
                    stage: Stage::DataReady,
                    classes: classes.clone(),
                    train_images: *train_images,
                    validation_images: *validation_images,
                    test_images: *test_images,
                    skipped_images: *skipped_images,
                })
            }
            TrainEvent::PhaseStarted {
                phase_index,
                name,
                epochs,
                learning_rate,
                learning_rates,
                trainable_params,
                non_trainable_params,
                batch_norm,
                execution,
                resumed_from_epoch,
                class_weights,
            } => {
                db::jobs::set_progress(&mut *tx, job_id, *phase_index as i64, name, 0).await?;
                EventPayload::Phase(PhaseEvent::Started {
                    phase_index: *phase_index,
                    name: name.clone(),
                    epochs: *epochs,
                    learning_rate: *learning_rate,
                    learning_rates: learning_rates.clone(),
                    trainable_params: *trainable_params,
                    non_trainable_params: *non_trainable_params,
                    batch_norm: *batch_norm,
                    execution: execution.clone(),
                    resumed_from_epoch: *resumed_from_epoch,
                    class_weights: class_weights.clone(),
                })
            }
            TrainEvent::PhaseEnded { phase_index, name, epochs_run, stopped_early, restored_best_epoch, diverged } => {
                EventPayload::Phase(PhaseEvent::Ended {
                    phase_index: *phase_index,
                    name: name.clone(),
                    epochs_run: *epochs_run,
                    stopped_early: *stopped_early,
                    restored_best_epoch: *restored_best_epoch,
                    diverged: diverged.clone(),
                })
            }
            TrainEvent::Step { phase_index, epoch, batch, batches, global_step, loss, accuracy, learning_rate } => {
                let step = StepEvent {
                    phase_index: *phase_index,
                    phase: phase_name(*phase_index),
                    epoch: *epoch,
                    batch: *batch,
                    batches: *batches,
                    global_step: *global_step,
                    loss: *loss,
                    accuracy: *accuracy,
                    learning_rate: *learning_rate,
                };
                db::jobs::set_latest_metrics(&mut *tx, job_id, &serde_json::to_value(&step)?).await?;
                EventPayload::Step(step)
            }
            TrainEvent::EpochEnded {
                phase_index,
                epoch,
                train,
                validation,
                evaluation,
                learning_rate,
                epochs_without_improvement,
                seconds,
            } => {
                let epoch_event = EpochEvent {
                    phase_index: *phase_index,
                    phase: phase_name(*phase_index),
                    epoch: *epoch,
                    train: *train,
                    validation: *validation,
                    evaluation: evaluation.clone(),
                    learning_rate: *learning_rate,
                    epochs_without_improvement: *epochs_without_improvement,
                    seconds: *seconds,
                };
                db::jobs::set_progress(&mut *tx, job_id, *phase_index as i64, &epoch_event.phase, i64::from(*epoch))
                    .await?;
                let mut latest = serde_json::to_value(&epoch_event)?;
                // The job's summary keeps the figures; the matrix is in the event and the
                // checkpoint.
                if let Some(object) = latest.as_object_mut() {
                    object.remove("evaluation");
                }
                db::jobs::set_latest_metrics(&mut *tx, job_id, &latest).await?;
                EventPayload::Epoch(epoch_event)
            }
            TrainEvent::CheckpointWritten {
                phase_index,
                epoch,
                weights,
                optimizer,
                validation,
                evaluation,
                resume,
            } => {
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
                    evaluation: evaluation.clone().map(sqlx::types::Json),
                    path: weights.path.to_string_lossy().into_owned(),
                    size_bytes: weights.size as i64,
                    sha256: weights.sha256.clone(),
                    optimizer_path: Some(optimizer.path.to_string_lossy().into_owned()),
                    resume_state: sqlx::types::Json(resume.clone()),
                    created_at: db::now(),
                };
                db::checkpoints::insert(&mut *tx, &row).await?;
                superseded_files = super::retention::prune(&mut tx, job_id).await?;
                EventPayload::Checkpoint(CheckpointEvent {
                    id,
                    phase_index: *phase_index,
                    phase: row.phase_name,
                    epoch: *epoch,
                    validation: *validation,
                    size: weights.size,
                    sha256: weights.sha256.clone(),
                })
            }
        };
        let stored = hub::store(&mut *tx, job_id, &payload).await?;
        tx.commit().await?;
        self.hub.publish(stored);
        super::retention::remove_files(&superseded_files);
        Ok(())
    }
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
    failure: Option<Failure>,
}

impl Observer for Recorder {
    fn on_event(&mut self, event: &TrainEvent) {
        if self.failure.is_some() {
            return;
        }
        let result = self.handle.block_on(self.jobs.record_train_event(&self.job_id, event, &self.phase_names));
        if let Err(error) = result {
            tracing::error!(%error, "recording a training event failed; stopping the job");
            self.failure = Some(Failure::recording(&error));
            self.control.request_stop(StopReason::Cancel);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::jobs::{CancelOutcome, Paths};
    use crate::train::{JobSpec, ModelSummary};

    async fn queue_one(jobs: &Jobs) -> String {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "dataset_id": "d",
            "model": {"backbone": {"architecture": "small_cnn", "widths": [8]}, "head": {"units": 1}},
            "phases": [{"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 1}]
        }))
        .unwrap();
        let summary = ModelSummary { layers: Vec::new(), total_params: 0, phases: Vec::new() };
        let new = db::jobs::NewJob {
            id: "job-1",
            name: None,
            dataset_id: "d",
            validation_dataset_id: None,
            spec: &spec,
            summary: &summary,
            classes: &["cat".to_owned(), "dog".to_owned()],
            created_at: db::now(),
        };
        db::jobs::insert(&jobs.pool, &new).await.unwrap();
        new.id.to_owned()
    }

    /// Claimed but not yet training: the moment the old code covered with retries.
    #[tokio::test]
    async fn a_cancel_between_claim_and_training_reaches_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&dir.path().join("tanuki.db")).await.unwrap();
        let paths = Paths { datasets: dir.path().into(), checkpoints: dir.path().into(), backbones: dir.path().into() };
        let jobs = Jobs::new(pool, paths, Default::default(), CancellationToken::new());
        let id = queue_one(&jobs).await;

        let claimed = jobs.claim_next().await.unwrap().expect("the queued job");
        assert_eq!(claimed.job.state, JobState::Running);
        match jobs.cancel(&id).await.unwrap() {
            CancelOutcome::Stopping(job) => assert_eq!(job.state, JobState::Running),
            other => panic!("expected the running job to be asked to stop, got {other:?}"),
        }
        assert_eq!(claimed.control.stop_requested(), Some(StopReason::Cancel));
    }
}
