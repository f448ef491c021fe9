//! The fit loop: data → phases → epochs → batches, emitting [`TrainEvent`]s in order.
//!
//! Each phase sets the trainable set from its selectors and rebuilds the optimizer over exactly
//! those weights (the guide's re-compile). Frozen weights are used detached, so no graph is built
//! through them; with batch norm in inference mode frozen conv → BN pairs are folded for the
//! phase, and a head-only phase without augmentation trains on cached backbone features
//! (docs/performance.md). After every epoch: validation (dropout off, batch norm in inference mode), the
//! callbacks, and a checkpoint. The stop flag is checked after every batch and between epochs.
//!
//! Divergence: every batch's loss, and every weight at the end of every epoch (before its
//! checkpoint is written), must be finite. When one is not, the phase stops: the run fails with
//! [`TrainError::Diverged`], or, when the phase says `restore_best`, the phase's best weights
//! come back and the run goes on with the next phase.

mod callbacks;
pub(crate) mod examples;
pub(crate) mod loss;
pub(crate) mod optim;
mod phase;
mod step;

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;

use crate::train::checkpoint::{self, load_weights};
use crate::train::data::augment::Normalize;
use crate::train::data::feature_cache::{self, Cached, FeatureCache};
use crate::train::data::{self, AugmentFor, Dataset};
use crate::train::error::TrainError;
use crate::train::evaluation::{Evaluation, Evaluator};
use crate::train::fit::phase::PhaseState;
use crate::train::fit::step::{check_stop, train_step_weighted, Sums};
use crate::train::job::{
    Control, Divergence, Metrics, Observer, ResumeFrom, ResumeState, TrainEvent, TrainJob, TrainOutcome,
};
use crate::train::model::{self, Model};
use crate::train::nn::ForwardCtx;
use crate::train::rng::{self, Stream};
use crate::train::spec::{BatchNormMode, OnDivergence, PhaseSpec};
use crate::train::weights;
pub use loss::LossKind;
pub use optim::Optimizer;
pub use step::{loss_kind, train_step, train_step_from};

/// Runs the whole job; see the module docs. Blocking: call it on a dedicated thread.
pub fn run(job: &TrainJob, control: &Control, observer: &mut dyn Observer) -> Result<TrainOutcome, TrainError> {
    run_with(job, control, observer, RunOptions::default())
}

/// How [`run_with`] may execute a job; the results are the same (within float rounding).
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Train head-only phases on cached backbone features when allowed (see
    /// [`feature_cache`](crate::train::feature_cache)). Off only to compare the two paths.
    pub feature_cache: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { feature_cache: true }
    }
}

/// [`run`] with explicit [`RunOptions`].
pub fn run_with(
    job: &TrainJob,
    control: &Control,
    observer: &mut dyn Observer,
    options: RunOptions,
) -> Result<TrainOutcome, TrainError> {
    let spec = &job.spec;
    crate::train::validate::validate(spec)?;
    let loss_kind = loss_kind(spec.model.head.units, job.classes.len())?;
    let n_classes = job.classes.len();
    let all = job.samples.iter().chain(job.validation_samples.iter().flatten());
    if let Some(s) = all.into_iter().find(|s| s.label >= n_classes) {
        return Err(TrainError::Data(format!(
            "{} has label {} but there are {n_classes} classes",
            s.path.display(),
            s.label
        )));
    }

    let splits = data::split(job)?;
    let (train, skipped_train) = Dataset::decode(&splits.train, &spec.input);
    let (validation, skipped_val) = Dataset::decode(&splits.validation, &spec.input);
    let (test, skipped_test) = Dataset::decode(&splits.test, &spec.input);
    if train.is_empty() {
        return Err(TrainError::Data("no training image could be decoded".into()));
    }
    observer.on_event(&TrainEvent::DataReady {
        classes: job.classes.clone(),
        train_images: train.len(),
        validation_images: validation.len(),
        test_images: test.len(),
        skipped_images: skipped_train + skipped_val + skipped_test,
    });
    check_stop(control)?;
    // Keras's `class_weight`: the training loss only, from the images that decoded.
    let class_weights =
        spec.class_weights.as_ref().map(|w| w.resolve(&job.classes, train.images.iter().map(|i| i.label as usize)));

    let model = initial_model(job)?;
    let mut start_phase = 0;
    if let Some(resume) = &job.resume {
        if resume.state.phase_index >= spec.phases.len() {
            return Err(TrainError::Data(format!(
                "resume state names phase {} of {}",
                resume.state.phase_index,
                spec.phases.len()
            )));
        }
        model.params.load(&load_weights(&resume.weights)?, |_| true)?;
        start_phase = resume.state.phase_index;
    }

    let mut fit = Fit {
        job,
        control,
        observer,
        model,
        train,
        validation,
        loss_kind,
        norm: Normalize::new(&spec.input, spec.model.backbone.architecture),
        class_weights,
        options,
        global_step: job.resume.as_ref().map_or(0, |r| r.state.global_step),
        last_finite: None,
    };
    let mut last_validation = None;
    for phase_index in start_phase..spec.phases.len() {
        check_stop(control)?;
        let resume = job.resume.as_ref().filter(|_| phase_index == start_phase);
        last_validation = fit.phase(phase_index, resume)?;
    }

    let test_set = test;
    let test = if test_set.is_empty() { None } else { Some(fit.evaluate(&test_set, None)?) };
    let (test, test_evaluation) = split(test);
    let (validation, validation_evaluation) = split(last_validation);
    for (set, ds, evaluation) in
        [("validation", &fit.validation, &validation_evaluation), ("test", &test_set, &test_evaluation)]
    {
        if let Some(evaluation) = evaluation {
            // Thumbnails for the API and the dashboard; a job does not fail for want of them.
            if let Err(error) = examples::write(&job.checkpoint_dir, set, ds, evaluation) {
                tracing::warn!(%error, set, "the worst-classified images could not be written");
            }
        }
    }
    let weights = checkpoint::write_with_metadata(
        &job.checkpoint_dir,
        &format!("weights-final-s{}.safetensors", fit.global_step),
        &fit.model.params.snapshot()?,
        Some(weights_metadata(&fit.model)),
    )?;
    Ok(TrainOutcome { test, validation, test_evaluation, validation_evaluation, weights: Some(weights) })
}

/// `class folder/file name` of an image file.
fn short_name(path: &std::path::Path) -> String {
    let parts: Vec<String> = path.iter().rev().take(2).map(|p| p.to_string_lossy().into_owned()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Metrics and the evaluation of one pass over a held-out set.
type Evaluated = (Metrics, Evaluation);

fn split(evaluated: Option<Evaluated>) -> (Option<Metrics>, Option<Evaluation>) {
    evaluated.map_or((None, None), |(m, e)| (Some(m), Some(e)))
}

/// The model a job starts from: fresh, or with the backbone of `initial_weights` (imported from
/// its format, the head freshly initialised), under the numerics those weights were trained
/// with. A resumed job takes the numerics its checkpoint recorded.
fn initial_model(job: &TrainJob) -> Result<Model, TrainError> {
    let spec = &job.spec;
    let resumed = match &job.resume {
        Some(r) => Some(weights::file_convention(&r.weights)?),
        None => None,
    };
    let imported = match &job.initial_weights {
        Some(w) => Some(weights::import(&spec.model, &spec.input, w.format, &w.path, false)?),
        None => None,
    };
    let convention = resumed.or(imported.as_ref().map(|(_, c)| *c)).unwrap_or_default();
    let model = Model::with_convention(&spec.model, &spec.input, spec.seed, convention)?;
    if let Some((tensors, _)) = &imported {
        model.params.load(tensors, |name| name.starts_with("backbone."))?;
    }
    Ok(model)
}

/// Header metadata of our weights files: the numerics they need.
pub fn weights_metadata(model: &Model) -> HashMap<String, String> {
    HashMap::from([(weights::CONVENTION_KEY.to_string(), model.convention.as_str().to_string())])
}

/// The state shared by every phase of one run.
struct Fit<'a> {
    job: &'a TrainJob,
    control: &'a Control,
    observer: &'a mut dyn Observer,
    model: Model,
    train: Dataset,
    validation: Dataset,
    loss_kind: LossKind,
    norm: Normalize,
    /// One weight per class for the training loss (`JobSpec::class_weights`), if any.
    class_weights: Option<Vec<f64>>,
    options: RunOptions,
    global_step: u64,
    /// The latest finite training metrics (a step's running means or an epoch's), reported
    /// with a divergence.
    last_finite: Option<Metrics>,
}

impl Fit<'_> {
    /// Runs phase `index` (continuing from `resume` when given); returns its final validation
    /// metrics and evaluation.
    fn phase(&mut self, index: usize, resume: Option<&ResumeFrom>) -> Result<Option<Evaluated>, TrainError> {
        let job = self.job;
        let phase = &job.spec.phases[index];
        self.model.set_trainable(&model::phase_selectors(&self.job.spec.model, phase));
        // Folds and cached features hold this phase's frozen weights; both end with the phase.
        if phase.batch_norm == BatchNormMode::Inference {
            self.model.fold_frozen_batch_norms()?;
        }
        let result = self.phase_inner(index, phase, resume);
        self.model.unfold();
        result
    }

    fn phase_inner(
        &mut self,
        index: usize,
        phase: &PhaseSpec,
        resume: Option<&ResumeFrom>,
    ) -> Result<Option<Evaluated>, TrainError> {
        let (trainable_params, non_trainable_params) = self.model.params.counts();
        let mut state = PhaseState::new(phase, &self.model.params, resume)?;
        let cache = self
            .model
            .cacheable_prefix()
            .filter(|_| self.options.feature_cache && feature_cache::phase_allows(phase, &self.job.spec.augmentation));
        self.observer.on_event(&TrainEvent::PhaseStarted {
            phase_index: index,
            name: phase.name.clone(),
            epochs: phase.epochs,
            learning_rate: state.optimizer.learning_rate(),
            learning_rates: state.optimizer.learning_rates(),
            trainable_params,
            non_trainable_params,
            batch_norm: phase.batch_norm,
            execution: if cache.is_some() { "feature_cache" } else { self.model.execution() }.to_string(),
            resumed_from_epoch: resume.map(|r| r.state.epochs_done),
            class_weights: self
                .class_weights
                .as_ref()
                .map(|w| self.job.classes.iter().cloned().zip(w.iter().copied()).collect()),
        });
        let cache = match cache {
            Some(end) => {
                let check = || check_stop(self.control);
                let (bs, norm) = (self.job.spec.batch_size, self.norm);
                Some(FeatureCache::build(&self.model, end, &self.train, &self.validation, bs, norm, &check)?)
            }
            None => None,
        };

        let mut last_validation = None;
        let mut diverged = None;
        while !state.finished(phase) {
            check_stop(self.control)?;
            match self.epoch(index, phase, &mut state, cache.as_ref()) {
                Ok(validation) => last_validation = validation,
                Err(TrainError::Diverged(at)) if phase.on_divergence == OnDivergence::RestoreBest => {
                    tracing::warn!(%at, "phase diverged; restoring its best weights");
                    diverged = Some(*at);
                    break;
                }
                Err(error) => return Err(error),
            }
        }

        let (restored_best_epoch, restored) = state.restore(diverged.is_some(), &self.model.params)?;
        if restored {
            last_validation = self.evaluate_validation(cache.as_ref())?;
        }
        self.observer.on_event(&TrainEvent::PhaseEnded {
            phase_index: index,
            name: phase.name.clone(),
            epochs_run: state.epochs_done,
            stopped_early: state.stopped_early,
            restored_best_epoch,
            diverged,
        });
        Ok(last_validation)
    }

    /// One epoch of a phase: train, check every weight is finite, validate, the callbacks, the
    /// event, the checkpoint. Returns the validation metrics and evaluation.
    fn epoch(
        &mut self,
        index: usize,
        phase: &PhaseSpec,
        state: &mut PhaseState,
        cache: Option<&FeatureCache>,
    ) -> Result<Option<Evaluated>, TrainError> {
        let epoch = state.epochs_done + 1;
        let started = Instant::now();
        let lr = state.optimizer.learning_rate();
        let train = self.train_epoch(index, phase, epoch, &mut state.optimizer, cache)?;
        self.last_finite = Some(train).filter(|m| m.loss.is_finite());
        // Before the checkpoint, so that no checkpoint ever holds a non-finite weight.
        if let Some(name) = self.model.params.first_non_finite()? {
            let at = Divergence {
                phase_index: index,
                epoch,
                batch: 0,
                global_step: self.global_step,
                what: name.to_owned(),
                last_finite: self.last_finite,
            };
            return Err(TrainError::Diverged(Box::new(at)));
        }
        let evaluated = self.evaluate_validation(cache)?;
        let (validation, evaluation) = split(evaluated.clone());
        state.end_epoch(phase, epoch, &train, validation.as_ref(), &self.model.params)?;
        self.observer.on_event(&TrainEvent::EpochEnded {
            phase_index: index,
            epoch,
            train,
            validation,
            evaluation: evaluation.clone(),
            learning_rate: lr,
            epochs_without_improvement: state.progress.tracker.wait,
            seconds: started.elapsed().as_secs_f64(),
        });
        self.write_checkpoint(&state.optimizer, validation, evaluation, state.resume_state(index, self.global_step))?;
        Ok(evaluated)
    }

    /// One pass over the shuffled training set (or its cached features); returns the epoch's
    /// running means. Both paths draw the same order and dropout masks.
    fn train_epoch(
        &mut self,
        index: usize,
        phase: &PhaseSpec,
        epoch: u32,
        optimizer: &mut Optimizer,
        cache: Option<&FeatureCache>,
    ) -> Result<Metrics, TrainError> {
        let spec = &self.job.spec;
        let order = data::epoch_order(self.train.len(), spec.seed, index, epoch);
        let batches = order.len().div_ceil(spec.batch_size);
        let aug = AugmentFor { spec: &spec.augmentation, seed: spec.seed, phase: index, epoch };
        let bn_training = phase.batch_norm == BatchNormMode::Training;
        let start = cache.map_or(0, |c| c.start);
        let mut sums = Sums::default();
        let weights: Option<Vec<f32>> = self.class_weights.as_ref().map(|w| w.iter().map(|&x| x as f32).collect());
        let Fit { model, observer, control, loss_kind, global_step, norm, train, last_finite, .. } = self;
        let mut step = |b: usize, x: &Tensor, labels: &[u32]| -> Result<(), TrainError> {
            let mut ctx =
                ForwardCtx::new(true, bn_training, true, rng::rng(spec.seed, Stream::Dropout, index, epoch, b));
            let (loss, logits) =
                train_step_weighted(model, start, optimizer, *loss_kind, weights.as_deref(), x, labels, &mut ctx)?;
            *global_step += 1;
            if !loss.is_finite() {
                let last = if sums.is_empty() { *last_finite } else { Some(sums.metrics()) };
                let at = Divergence {
                    phase_index: index,
                    epoch,
                    batch: b + 1,
                    global_step: *global_step,
                    what: "loss".into(),
                    last_finite: last,
                };
                return Err(TrainError::Diverged(Box::new(at)));
            }
            sums.add(loss, loss_kind.correct(&logits, labels)?, labels.len());
            if *global_step % u64::from(spec.log_every_steps) == 0 || b + 1 == batches {
                let m = sums.metrics();
                observer.on_event(&TrainEvent::Step {
                    phase_index: index,
                    epoch,
                    batch: b + 1,
                    batches,
                    global_step: *global_step,
                    loss: m.loss,
                    accuracy: m.accuracy,
                    learning_rate: optimizer.learning_rate(),
                });
            }
            check_stop(control)
        };
        match cache {
            Some(c) => {
                for (b, chunk) in order.chunks(spec.batch_size).enumerate() {
                    let (x, labels) = c.train.batch(chunk)?;
                    step(b, &x, &labels)?;
                }
            }
            None => data::for_each_batch(train, &order, spec.batch_size, Some(aug), *norm, |b, batch| {
                step(b, &batch.tensor(&model.device)?, &batch.labels) // x: [batch, 3, h, w]
            })?,
        }
        Ok(sums.metrics())
    }

    /// Loss, accuracy and the evaluation over `ds` in inference mode, without building any graph.
    fn evaluate(&self, ds: &Dataset, cached: Option<(usize, &Cached)>) -> Result<Evaluated, TrainError> {
        let mut sums = Sums::default();
        let mut evaluator = Evaluator::new(&self.job.classes);
        // The weights hold still for the whole pass: every batch norm folds into its convolution.
        let folding = self.model.inference_folding()?;
        let mut add = |start: usize, x: &Tensor, labels: &[u32]| -> Result<(), TrainError> {
            let logits = self.model.forward_inference(start, x, &folding)?;
            let loss = self.loss_kind.loss(&logits, labels)?;
            sums.add(loss.to_scalar::<f32>()? as f64, self.loss_kind.correct(&logits, labels)?, labels.len());
            for (&label, p) in labels.iter().zip(self.loss_kind.probabilities(&logits)?) {
                evaluator.add(label, p);
            }
            Ok(())
        };
        let order: Vec<usize> = (0..ds.len()).collect();
        match cached {
            Some((start, c)) => {
                for chunk in order.chunks(self.job.spec.batch_size) {
                    let (x, labels) = c.batch(chunk)?;
                    add(start, &x, &labels)?;
                }
            }
            None => data::for_each_batch(ds, &order, self.job.spec.batch_size, None, self.norm, |_, batch| {
                add(0, &batch.tensor(&self.model.device)?, &batch.labels)
            })?,
        }
        let mut evaluation = evaluator.finish();
        for example in &mut evaluation.worst {
            example.file = ds.images.get(example.position).map(|i| short_name(&i.path)).unwrap_or_default();
        }
        Ok((sums.metrics(), evaluation))
    }

    fn evaluate_validation(&self, cache: Option<&FeatureCache>) -> Result<Option<Evaluated>, TrainError> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let cached = cache.and_then(|c| Some((c.start, c.validation.as_ref()?)));
        Ok(Some(self.evaluate(&self.validation, cached)?))
    }

    fn write_checkpoint(
        &mut self,
        optimizer: &Optimizer,
        validation: Option<Metrics>,
        evaluation: Option<Evaluation>,
        state: ResumeState,
    ) -> Result<(), TrainError> {
        let dir = &self.job.checkpoint_dir;
        let (weights_name, optimizer_name) =
            checkpoint::file_names(state.phase_index, state.epochs_done, state.global_step);
        let weights = checkpoint::write_with_metadata(
            dir,
            &weights_name,
            &self.model.params.snapshot()?,
            Some(weights_metadata(&self.model)),
        )?;
        let optimizer = match optimizer.export().and_then(|state| checkpoint::write(dir, &optimizer_name, &state)) {
            Ok(file) => file,
            Err(error) => {
                // Weights without their optimizer state are no checkpoint: nothing refers to them.
                let _ = std::fs::remove_file(&weights.path);
                return Err(error);
            }
        };
        self.observer.on_event(&TrainEvent::CheckpointWritten {
            phase_index: state.phase_index,
            epoch: state.epochs_done,
            weights,
            optimizer,
            validation,
            evaluation,
            resume: state,
        });
        Ok(())
    }
}
