//! The narrow interface between the training code and whoever runs it: what goes in
//! ([`TrainJob`], [`Control`]), what comes out while it runs ([`TrainEvent`] through an
//! [`Observer`]) and at the end ([`TrainOutcome`] or a [`TrainError`](crate::train::error::TrainError)).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::train::evaluation::{Evaluation, Evaluations};
use crate::train::spec::{JobSpec, WeightsFormat};

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`TrainJob::classes`].
    pub label: usize,
}

/// Everything one run of training needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub spec: JobSpec,
    /// Class names, sorted; labels index into this.
    pub classes: Vec<String>,
    /// The images of `spec.dataset_id`; split into train/validation/test with `spec.split`.
    pub samples: Vec<Sample>,
    /// The images of `spec.validation_dataset_id`, when the spec names one (then the split holds
    /// out no validation fraction).
    pub validation_samples: Option<Vec<Sample>>,
    /// A safetensors file of backbone weights to start from instead of random initialisation:
    /// our own checkpoint (its `backbone.*` tensors) or an imported Keras/torchvision file. The
    /// head always starts new. The forward pass follows the numerics of the file's format.
    pub initial_weights: Option<InitialWeights>,
    /// Set when resuming a job that was interrupted; the model and optimizer come from there.
    pub resume: Option<ResumeFrom>,
    /// Checkpoint files are written here (created if missing).
    pub checkpoint_dir: PathBuf,
}

/// A weights file and the naming/layout convention it is written in.
#[derive(Debug, Clone, PartialEq)]
pub struct InitialWeights {
    pub path: PathBuf,
    pub format: WeightsFormat,
}

/// Where an interrupted job picks up.
#[derive(Debug, Clone)]
pub struct ResumeFrom {
    /// The last checkpoint's weights file.
    pub weights: PathBuf,
    /// Its optimizer state file.
    pub optimizer: PathBuf,
    pub state: ResumeState,
    /// The best checkpoint of the current phase so far (for early stopping's weight restore).
    pub phase_best_weights: Option<PathBuf>,
}

/// Loop state stored with every checkpoint so a run can continue exactly after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResumeState {
    /// Index into `spec.phases` of the phase the checkpoint was taken in.
    pub phase_index: usize,
    /// Epochs of that phase completed (1-based count).
    pub epochs_done: u32,
    /// Training steps done over the whole job.
    pub global_step: u64,
    pub learning_rate: f64,
    /// Best monitored value of the phase so far, and epochs since it improved.
    pub best_monitored: Option<f64>,
    pub epochs_without_improvement: u32,
    /// Epochs since reduce-on-plateau last improved or cut the learning rate.
    pub plateau_wait: u32,
    /// True when early stopping ended the phase at this checkpoint.
    pub stopped_early: bool,
    /// Reduce-on-plateau's own best monitored value of the phase (it may watch another metric).
    #[serde(default)]
    pub plateau_best: Option<f64>,
    /// Epoch (1-based) of the phase's best monitored value so far. `epochs_without_improvement
    /// == 0` means this very checkpoint is the phase's best (the one to pass as
    /// `phase_best_weights` when resuming).
    #[serde(default)]
    pub best_epoch: Option<u32>,
}

/// Why training should stop at the next batch boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user canceled the job: it ends `canceled`.
    Cancel,
    /// The service is shutting down: the job goes back to the queue and resumes later.
    Shutdown,
}

/// The cooperative stop flag, checked after every batch.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicU8,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop; the first reason given wins.
    pub fn request_stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Cancel => 1,
            StopReason::Shutdown => 2,
        };
        let _ = self.stop.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}

/// Receives events in the order they happen. The run waits for each call to return, so an
/// observer that persists before returning gives "stored first, then broadcast".
pub trait Observer {
    fn on_event(&mut self, event: &TrainEvent);
}

/// Loss and accuracy over a set of batches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
}

/// Where and how training stopped being finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Divergence {
    pub phase_index: usize,
    /// 1-based.
    pub epoch: u32,
    /// 1-based; 0 when found at the end of the epoch (a weight, not a batch's loss).
    pub batch: usize,
    pub global_step: u64,
    /// What was not finite: `loss`, or the first weight found so, e.g. `head.dense.weight`.
    pub what: String,
    /// The running means of the epoch up to the batch before, or the last finished epoch's
    /// training metrics; `None` when no finite step had been taken.
    pub last_finite: Option<Metrics>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "training diverged: {} is not finite in phase {}, epoch {}, batch {} (step {})",
            self.what, self.phase_index, self.epoch, self.batch, self.global_step
        )?;
        match self.last_finite {
            Some(m) => write!(f, "; last finite metrics: loss {:.4}, accuracy {:.4}", m.loss, m.accuracy),
            None => write!(f, "; no finite step before it"),
        }
    }
}

/// A checkpoint file that has been completely written (temporary name, fsync, rename).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointFile {
    /// utoipa has no schema for `PathBuf`; it is a string in JSON.
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub size: u64,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
}

/// What the training loop reports as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    /// Data is loaded and split.
    DataReady {
        classes: Vec<String>,
        train_images: usize,
        validation_images: usize,
        test_images: usize,
        /// Files that failed to decode and were left out (counted in none of the sets above).
        #[serde(default)]
        skipped_images: usize,
    },
    /// A phase begins: the optimizer has been rebuilt over exactly this trainable set.
    PhaseStarted {
        phase_index: usize,
        name: String,
        epochs: u32,
        learning_rate: f64,
        /// Per parameter group (selector → rate) when the optimizer spec sets `learning_rates`;
        /// empty otherwise (every weight at `learning_rate`).
        #[serde(default)]
        learning_rates: std::collections::BTreeMap<String, f64>,
        trainable_params: usize,
        non_trainable_params: usize,
        batch_norm: crate::train::spec::BatchNormMode,
        /// How the frozen part runs, e.g. `"backbone_forward"` or `"full_backward"`.
        execution: String,
        /// Set when this phase continues from a checkpoint after an interruption.
        resumed_from_epoch: Option<u32>,
        /// Class → weight of its images in the training loss, when the spec sets weights.
        #[serde(default)]
        class_weights: Option<std::collections::BTreeMap<String, f64>>,
    },
    /// Every `log_every_steps` steps: the running means over the epoch so far.
    Step {
        phase_index: usize,
        epoch: u32,
        /// Batch index within the epoch (1-based) and batches per epoch.
        batch: usize,
        batches: usize,
        global_step: u64,
        loss: f64,
        accuracy: f64,
        learning_rate: f64,
    },
    /// An epoch of a phase ended (epoch is 1-based within the phase).
    EpochEnded {
        phase_index: usize,
        epoch: u32,
        train: Metrics,
        validation: Option<Metrics>,
        /// The validation set's evaluation (with `validation`).
        evaluation: Option<Evaluation>,
        learning_rate: f64,
        epochs_without_improvement: u32,
        seconds: f64,
    },
    /// A checkpoint was written after an epoch.
    CheckpointWritten {
        phase_index: usize,
        epoch: u32,
        weights: CheckpointFile,
        optimizer: CheckpointFile,
        validation: Option<Metrics>,
        /// The validation set's evaluation of these weights.
        evaluation: Option<Evaluation>,
        resume: ResumeState,
    },
    /// A phase ended.
    PhaseEnded {
        phase_index: usize,
        name: String,
        epochs_run: u32,
        stopped_early: bool,
        /// Epoch (1-based) whose weights the phase ends with, when best weights were restored.
        restored_best_epoch: Option<u32>,
        /// Set when the phase ended because it diverged and its spec said `restore_best`.
        #[serde(skip_serializing_if = "Option::is_none")]
        diverged: Option<Divergence>,
    },
}

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrainOutcome {
    /// Evaluation on the held-out test set; `None` when the split holds out none.
    pub test: Option<Metrics>,
    /// The last validation metrics of the last phase (of the restored weights when early
    /// stopping restored the best ones).
    pub validation: Option<Metrics>,
    /// The test set's evaluation (with `test`).
    #[serde(default)]
    pub test_evaluation: Option<Evaluation>,
    /// The validation set's evaluation of the final weights (with `validation`).
    #[serde(default)]
    pub validation_evaluation: Option<Evaluation>,
    /// The final model weights (after any restore of best weights), every parameter included.
    #[serde(default)]
    pub weights: Option<CheckpointFile>,
}

impl TrainOutcome {
    /// The final weights' evaluations.
    pub fn evaluations(&self) -> Evaluations {
        Evaluations { validation: self.validation_evaluation.clone(), test: self.test_evaluation.clone() }
    }
}

/// Keras's `model.summary(show_trainable=True)`, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelSummary {
    pub layers: Vec<LayerSummary>,
    /// Every weight, batch-norm moving statistics included.
    pub total_params: usize,
    pub phases: Vec<PhaseParams>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LayerSummary {
    /// Hierarchical name, e.g. `backbone.block1.bn`; selectors in a phase's `trainable` match
    /// prefixes of it.
    pub name: String,
    /// Keras's class name: `Conv2D`, `BatchNormalization`, `ReLU`, `GlobalAveragePooling2D`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Output shape without the batch dimension, channels last as Keras shows it: `[h, w, c]`.
    pub output_shape: Vec<usize>,
    pub params: usize,
    /// Per phase (in spec order): whether this layer's weights are trainable in it.
    pub trainable: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PhaseParams {
    pub name: String,
    pub trainable_params: usize,
    pub non_trainable_params: usize,
}
