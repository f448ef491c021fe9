//! Accepting a job (validation that needs the database, then queuing) and canceling one.

use std::time::Duration;

use serde_json::json;

use super::{EventKind, Jobs, JobsError};
use crate::db;
use crate::train::{self, JobSpec, SpecError, StopReason, WeightsSource};

/// What a cancel request did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was queued and is now `canceled`.
    Canceled(db::jobs::JobRow),
    /// The job is running; it stops at its next batch boundary and ends `canceled`.
    Stopping(db::jobs::JobRow),
}

impl Jobs {
    /// Validates the spec against the database and queues it.
    pub async fn submit(&self, spec: JobSpec) -> Result<db::jobs::JobRow, JobsError> {
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
        match &spec.model.backbone.weights {
            None => {}
            Some(WeightsSource::Checkpoint(reference)) => {
                if db::checkpoints::get(&self.pool, &reference.checkpoint).await?.is_none() {
                    return Err(SpecError::new(
                        "model.backbone.weights.checkpoint",
                        format!("no checkpoint with id {}", reference.checkpoint),
                    )
                    .into());
                }
            }
            Some(WeightsSource::Uploaded(id)) => {
                return Err(SpecError::new(
                    "model.backbone.weights",
                    format!("no uploaded backbone weights with id {id} (this architecture takes a checkpoint or null)"),
                )
                .into());
            }
        }
        let summary = train::summarize(&spec.model, &spec.input, &spec.phases)?;

        let id = uuid::Uuid::now_v7().to_string();
        let spec_json = serde_json::to_string(&spec).map_err(|e| JobsError::Internal(e.to_string()))?;
        let summary_json = serde_json::to_string(&summary).map_err(|e| JobsError::Internal(e.to_string()))?;
        let now = db::now();
        let mut tx = self.pool.begin().await?;
        db::jobs::insert(
            &mut *tx,
            &db::jobs::NewJob {
                id: &id,
                name: spec.name.as_deref(),
                dataset_id: &spec.dataset_id,
                validation_dataset_id: spec.validation_dataset_id.as_deref(),
                spec: &spec_json,
                summary: &summary_json,
                created_at: now,
            },
        )
        .await?;
        let event = db::events::append(&mut *tx, &id, EventKind::State.as_str(), &json!({"state": "queued"}).to_string(), now)
            .await?;
        tx.commit().await?;
        self.hub.publish(event.into());
        self.wake.notify_one();
        let job = db::jobs::get(&self.pool, &id).await?.ok_or_else(|| JobsError::NotFound(id.clone()))?;
        tracing::info!(job_id = %id, dataset_id = %spec.dataset_id, "job queued");
        Ok(job)
    }

    async fn dataset_classes(&self, id: &str, field: &str) -> Result<Vec<String>, JobsError> {
        let Some(row) = db::datasets::get(&self.pool, id).await? else {
            return Err(SpecError::new(field, format!("no dataset with id {id}")).into());
        };
        let classes: Vec<serde_json::Value> =
            serde_json::from_str(&row.classes).map_err(|e| JobsError::Internal(e.to_string()))?;
        Ok(classes.iter().filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_owned)).collect())
    }

    /// Cancels a queued job at once, or asks a running one to stop at its next batch boundary.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, JobsError> {
        // A worker may claim the job between our reads; a few short retries cover the moment
        // between its claim and the registration of its stop flag.
        for _ in 0..50 {
            let job = db::jobs::get(&self.pool, id).await?.ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
            match job.state.as_str() {
                "queued" => {
                    if db::jobs::transition(&self.pool, id, "queued", "canceled", Some(db::now()), None).await? {
                        self.hub.emit(&self.pool, id, EventKind::State, json!({"state": "canceled"})).await?;
                        self.hub
                            .emit(&self.pool, id, EventKind::End, json!({"state": "canceled", "test": null, "validation": null, "error": null}))
                            .await?;
                        tracing::info!(job_id = %id, "queued job canceled");
                        let job = db::jobs::get(&self.pool, id).await?.ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
                        return Ok(CancelOutcome::Canceled(job));
                    }
                }
                "running" => {
                    if let Some(control) = self.control_of(id) {
                        control.request_stop(StopReason::Cancel);
                        tracing::info!(job_id = %id, "cancel requested for running job");
                        return Ok(CancelOutcome::Stopping(job));
                    }
                }
                state => return Err(JobsError::AlreadyFinished { id: id.to_owned(), state: state.to_owned() }),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(JobsError::Internal(format!("job {id} could not be canceled: its state kept changing")))
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
            format!("the dataset has {classes} classes: use 1 unit (binary, two classes only) or {classes} units (softmax)"),
        ))
    }
}
