//! Accepting a job (validation that needs the database, then queuing) and canceling one.

use std::path::PathBuf;

use serde::de::IntoDeserializer;
use serde::Deserialize;

use super::end::JobEnd;
use super::event::{EventPayload, StateEvent};
use super::{hub, JobState, Jobs, JobsError};
use crate::db;
use crate::train::{self, JobSpec, SpecError, StopReason, WeightsFormat, WeightsSource};

/// What a cancel request did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued and is now `canceled`.
    Canceled(db::jobs::JobRow),
    /// The job is running; it stops at its next batch boundary and ends `canceled`.
    Stopping(db::jobs::JobRow),
}

impl Jobs {
    /// Validates the spec against the database and queues it; an idempotency key is tied to the
    /// job in the transaction that creates it.
    pub async fn submit(
        &self,
        spec: JobSpec,
        key: Option<db::idempotency::KeyClaim<'_>>,
    ) -> Result<db::jobs::JobRow, JobsError> {
        train::validate(&spec)?;
        let classes = self.dataset_classes(&spec.dataset_id, "dataset_id").await?;
        if let Some(validation_id) = &spec.validation_dataset_id {
            let validation_classes = self.dataset_classes(validation_id, "validation_dataset_id").await?;
            if validation_classes != classes {
                return Err(SpecError::new(
                    "validation_dataset_id",
                    format!("its classes {validation_classes:?} differ from the training dataset's {classes:?}"),
                )
                .into());
            }
        }
        check_head_units(spec.model.head.units, classes.len())?;
        if let Some(train::ClassWeights::PerClass(map)) = &spec.class_weights {
            if let Some(unknown) = map.keys().find(|k| !classes.contains(k)) {
                return Err(SpecError::new(
                    format!("class_weights.{unknown}"),
                    format!("the dataset has no class {unknown:?} (its classes: {classes:?})"),
                )
                .into());
            }
        }
        if let Some((path, format)) = self.initial_weights_of(&spec).await? {
            // The file must fit this spec's architecture (and width): checked now, not when a
            // worker gets to it.
            let model = spec.model.clone();
            let checked = tokio::task::spawn_blocking(move || train::check_weights(&model, format, &path))
                .await
                .map_err(|e| JobsError::Internal(e.to_string()))?;
            if let Err(error) = checked {
                return Err(SpecError::new(
                    "model.backbone.weights",
                    format!("these weights do not fit the model: {error}"),
                )
                .into());
            }
        }
        let summary = train::summarize(&spec.model, &spec.input, &spec.phases)?;

        let id = uuid::Uuid::now_v7().to_string();
        let now = db::now();
        let mut tx = self.pool.begin().await?;
        db::jobs::insert(
            &mut *tx,
            &db::jobs::NewJob {
                id: &id,
                name: spec.name.as_deref(),
                dataset_id: &spec.dataset_id,
                validation_dataset_id: spec.validation_dataset_id.as_deref(),
                spec: &spec,
                summary: &summary,
                classes: &classes,
                created_at: now,
            },
        )
        .await?;
        if let Some(key) = key {
            db::idempotency::attach(&mut *tx, key, &id).await?;
        }
        let queued = EventPayload::State(StateEvent::Changed { state: JobState::Queued });
        let event = hub::store(&mut *tx, &id, &queued).await?;
        // Read back inside the transaction: once committed and the workers woken, the job may
        // already be running, and the answer to the submit must show it as queued.
        let job = db::jobs::get(&mut *tx, &id).await?.ok_or_else(|| JobsError::NotFound(id.clone()))?;
        tx.commit().await?;
        self.hub.publish(event);
        self.wake.notify_one();
        tracing::info!(job_id = %id, dataset_id = %spec.dataset_id, "job queued");
        Ok(job)
    }

    /// The file and format of the spec's initial backbone weights, if it names any; an unknown
    /// id is an invalid spec.
    pub(super) async fn initial_weights_of(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<(PathBuf, WeightsFormat)>, JobsError> {
        match &spec.model.backbone.weights {
            None => Ok(None),
            Some(WeightsSource::Checkpoint(reference)) => {
                match db::checkpoints::get(&self.pool, &reference.checkpoint).await? {
                    Some(row) => Ok(Some((PathBuf::from(row.path), WeightsFormat::Tanuki))),
                    None => Err(SpecError::new(
                        "model.backbone.weights.checkpoint",
                        format!("no checkpoint with id {}", reference.checkpoint),
                    )
                    .into()),
                }
            }
            Some(WeightsSource::Uploaded(id)) => {
                let Some(row) = db::backbones::get(&self.pool, id).await? else {
                    return Err(SpecError::new(
                        "model.backbone.weights",
                        format!("no uploaded backbone weights with id {id}"),
                    )
                    .into());
                };
                let format = WeightsFormat::deserialize(row.format.as_str().into_deserializer())
                    .map_err(|e: serde::de::value::Error| JobsError::Internal(format!("stored format: {e}")))?;
                Ok(Some((PathBuf::from(row.path), format)))
            }
        }
    }

    async fn dataset_classes(&self, id: &str, field: &str) -> Result<Vec<String>, JobsError> {
        let Some(row) = db::datasets::get(&self.pool, id).await? else {
            return Err(SpecError::new(field, format!("no dataset with id {id}")).into());
        };
        let classes: Vec<crate::datasets::ClassCount> =
            serde_json::from_str(&row.classes).map_err(|e| JobsError::Internal(format!("stored classes: {e}")))?;
        Ok(classes.into_iter().map(|c| c.name).collect())
    }

    /// Cancels a queued job at once, or asks a running one to stop at its next batch boundary.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, JobsError> {
        // No worker claims a job while we hold the gate, and a job running here keeps its stop
        // flag until its end is recorded: what we read is what we act on.
        let _gate = self.claim_gate.lock().await;
        let job = db::jobs::get(&self.pool, id).await?.ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        match job.state {
            JobState::Queued => {
                if !self.record_end(id, JobState::Queued, &JobEnd::Canceled).await? {
                    // Only another process on the same database file can have moved it.
                    return Err(JobsError::Internal(format!("job {id} could not be canceled: its state changed")));
                }
                tracing::info!(job_id = %id, "queued job canceled");
                let job = db::jobs::get(&self.pool, id).await?.ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
                Ok(CancelOutcome::Canceled(job))
            }
            JobState::Running => {
                let Some(control) = self.control_of(id) else {
                    return Err(JobsError::Internal(format!("job {id} is running, but not in this process")));
                };
                control.request_stop(StopReason::Cancel);
                tracing::info!(job_id = %id, "cancel requested for running job");
                Ok(CancelOutcome::Stopping(job))
            }
            state => Err(JobsError::AlreadyFinished { id: id.to_owned(), state }),
        }
    }
}

/// One logit for two classes, or one unit per class.
fn check_head_units(units: usize, classes: usize) -> Result<(), SpecError> {
    let fits = if units == 1 { classes == 2 } else { units == classes };
    if fits {
        Ok(())
    } else {
        Err(SpecError::new(
            "model.head.units",
            format!(
                "the dataset has {classes} classes: use 1 unit (binary, two classes only) or {classes} units (softmax)"
            ),
        ))
    }
}
