//! What a job's events say: one variant of [`EventPayload`] per SSE `event:` type, with the
//! `data` it carries.
//!
//! These types are the contract of the event stream (and of the dashboard that reads it), apart
//! from the training loop's own [`TrainEvent`](crate::train::TrainEvent), which may change
//! freely: `runner.rs` converts one into the other, field by field. They are written (stored,
//! then sent) and documented from here; replays send the stored JSON as it was stored, so an
//! event written by an older version, or with a `null` where a loss was not a number, replays
//! as it was shown live.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::job_state::{FailureCode, JobState};
use crate::train::{BatchNormMode, Divergence, Evaluation, Evaluations, Metrics};

/// One event of a job's stream: the SSE `event:` is the tag, the SSE `data:` the content.
///
/// `dropped` and `shutdown` are never stored: the stream sends one of them, without an `id:`,
/// as its last event when it ends early.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum EventPayload {
    State(StateEvent),
    Phase(PhaseEvent),
    Step(StepEvent),
    Epoch(EpochEvent),
    Checkpoint(CheckpointEvent),
    /// The last stored event of a job: the stream ends after it.
    End(EndEvent),
    /// The client read too slowly; reconnect with `Last-Event-ID`.
    Dropped(StreamClosed),
    /// The server is shutting down; reconnect with `Last-Event-ID`.
    Shutdown(StreamClosed),
}

/// The tag of [`EventPayload::End`].
pub const END: &str = "end";

impl EventPayload {
    /// The SSE `event:` name (the serde tag) and the `data` object.
    pub fn to_parts(&self) -> Result<(String, Value), serde_json::Error> {
        match serde_json::to_value(self)? {
            Value::Object(mut tagged) => match (tagged.remove("event"), tagged.remove("data")) {
                (Some(Value::String(kind)), Some(data)) => Ok((kind, data)),
                _ => Err(serde::ser::Error::custom("an event payload without its tag or data")),
            },
            _ => Err(serde::ser::Error::custom("an event payload that is not an object")),
        }
    }
}

/// `state`: the job changed state, or passed a step of starting.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StateEvent {
    /// `running`: the data is loaded and split.
    DataReady {
        state: JobState,
        stage: Stage,
        classes: Vec<String>,
        train_images: usize,
        validation_images: usize,
        test_images: usize,
        /// Files that failed to decode and were left out.
        skipped_images: usize,
    },
    /// `running`: a worker started it (again, after an interruption).
    Started {
        state: JobState,
        /// 1 for the first run.
        attempt: i64,
        /// Where it picks up; null when it starts from the beginning.
        resumed_from: Option<ResumedFrom>,
    },
    /// `queued` again: the service stopped while it ran; it resumes from its last checkpoint.
    Requeued { state: JobState, reason: String },
    /// `failed`, and why.
    Failed { state: JobState, error: String },
    /// Any other change (`queued` on submit, `succeeded`, `canceled`).
    // `maxProperties`, so a message matches one variant of the schema's `oneOf`: the others have
    // `state` too, and `Changed` would match them all.
    #[schema(max_properties = 1)]
    Changed { state: JobState },
}

/// A step of starting a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    DataReady,
}

/// The checkpoint a resumed run starts after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct ResumedFrom {
    pub phase_index: usize,
    /// Epochs of that phase already done.
    pub epoch: u32,
}

/// `phase`: a phase started or ended.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PhaseEvent {
    /// The optimizer has been rebuilt over exactly this phase's trainable set.
    Started {
        phase_index: usize,
        name: String,
        epochs: u32,
        learning_rate: f64,
        /// Per parameter group (selector → rate) when the optimizer spec sets them; empty
        /// otherwise.
        learning_rates: BTreeMap<String, f64>,
        trainable_params: usize,
        non_trainable_params: usize,
        batch_norm: BatchNormMode,
        /// How the frozen part runs, e.g. `"backbone_forward"` or `"full_backward"`.
        execution: String,
        /// Set when the phase continues from a checkpoint after an interruption.
        resumed_from_epoch: Option<u32>,
        /// Class → weight of its images in the training loss, when the spec sets
        /// `class_weights` (absent otherwise).
        #[serde(skip_serializing_if = "Option::is_none")]
        class_weights: Option<BTreeMap<String, f64>>,
    },
    Ended {
        phase_index: usize,
        name: String,
        epochs_run: u32,
        stopped_early: bool,
        /// Epoch (1-based) whose weights the phase ends with, when best weights were restored.
        restored_best_epoch: Option<u32>,
        /// Where the phase diverged, when it did and its spec said `on_divergence: restore_best`
        /// (its weights are then the restored ones); absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        diverged: Option<Divergence>,
    },
}

/// `step`: every `log_every_steps` steps, the running means over the epoch so far.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StepEvent {
    pub phase_index: usize,
    /// The phase's name.
    pub phase: String,
    pub epoch: u32,
    /// Batch index within the epoch (1-based) and batches per epoch.
    pub batch: usize,
    pub batches: usize,
    pub global_step: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub learning_rate: f64,
}

/// `epoch`: an epoch of a phase ended (`epoch` is 1-based within the phase).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EpochEvent {
    pub phase_index: usize,
    /// The phase's name.
    pub phase: String,
    pub epoch: u32,
    pub train: Metrics,
    pub validation: Option<Metrics>,
    /// The validation set's confusion matrix and per-class metrics (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluation>,
    pub learning_rate: f64,
    pub epochs_without_improvement: u32,
    pub seconds: f64,
}

/// `checkpoint`: a checkpoint was written and recorded (`GET /v1/jobs/{id}/checkpoints` lists
/// the kept ones).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CheckpointEvent {
    pub id: String,
    pub phase_index: usize,
    /// The phase's name.
    pub phase: String,
    pub epoch: u32,
    pub validation: Option<Metrics>,
    pub size: u64,
    /// Hex sha256 of the weights file.
    pub sha256: String,
}

/// `end`: how the job ended.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EndEvent {
    /// `succeeded`, `failed` or `canceled`.
    pub state: JobState,
    /// Test-set metrics, when it succeeded and the split holds out a test set.
    pub test: Option<Metrics>,
    /// The last validation metrics, when it succeeded.
    pub validation: Option<Metrics>,
    /// The final weights' evaluations on the validation and test sets, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Evaluations>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why it failed, as a code (absent unless it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<FailureCode>,
    /// Where training diverged, when that is why it failed (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged: Option<Divergence>,
}

/// `dropped` and `shutdown`: why the stream ends before the job did, and where to resume.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StreamClosed {
    pub reason: String,
    pub last_event_id: i64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_tag_is_the_sse_event_name_and_the_content_its_data() {
        let end = EventPayload::End(EndEvent {
            state: JobState::Canceled,
            test: None,
            validation: None,
            evaluation: None,
            error: None,
            error_code: None,
            diverged: None,
        });
        let (kind, data) = end.to_parts().unwrap();
        assert_eq!(kind, END);
        assert_eq!(data, json!({"state": "canceled", "test": null, "validation": null, "error": null}));
    }

    #[test]
    fn state_events_keep_their_shapes() {
        let started =
            EventPayload::State(StateEvent::Started { state: JobState::Running, attempt: 1, resumed_from: None });
        assert_eq!(
            started.to_parts().unwrap(),
            ("state".into(), json!({"state": "running", "attempt": 1, "resumed_from": null}))
        );
        let phase = EventPayload::Phase(PhaseEvent::Ended {
            phase_index: 0,
            name: "head".into(),
            epochs_run: 2,
            stopped_early: false,
            restored_best_epoch: None,
            diverged: None,
        });
        let (kind, data) = phase.to_parts().unwrap();
        assert_eq!(kind, "phase");
        assert_eq!(data["status"], "ended");
    }

    #[test]
    fn a_loss_that_is_not_a_number_is_null_as_before() {
        let step = EventPayload::Step(StepEvent {
            phase_index: 0,
            phase: "head".into(),
            epoch: 1,
            batch: 1,
            batches: 2,
            global_step: 1,
            loss: f64::NAN,
            accuracy: 0.5,
            learning_rate: 0.001,
        });
        assert_eq!(step.to_parts().unwrap().1["loss"], Value::Null);
    }
}
