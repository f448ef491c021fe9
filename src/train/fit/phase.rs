//! One phase's state from set-up to teardown: the optimizer rebuilt over the phase's trainable
//! set, the callbacks with their trackers, the best weights kept for early stopping's restore
//! and for a divergence to go back to, and the counters a checkpoint records to resume from.
//! The loop that drives it is [`crate::train::fit`]'s.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::train::checkpoint::load_weights;
use crate::train::error::TrainError;
use crate::train::fit::callbacks::{EarlyStopping, ReduceLrOnPlateau};
use crate::train::fit::optim::Optimizer;
use crate::train::job::{Metrics, ResumeFrom, ResumeState};
use crate::train::nn::ParamStore;
use crate::train::spec::{OnDivergence, PhaseSpec};

pub(super) struct PhaseState {
    pub optimizer: Optimizer,
    pub progress: EarlyStopping,
    pub plateau: Option<ReduceLrOnPlateau>,
    /// Kept for early stopping's restore and for `on_divergence: restore_best`.
    keep_best: bool,
    best_weights: Option<HashMap<String, Tensor>>,
    pub best_epoch: Option<u32>,
    /// What a divergence goes back to when no epoch has improved yet.
    start_weights: Option<HashMap<String, Tensor>>,
    pub epochs_done: u32,
    pub stopped_early: bool,
}

impl PhaseState {
    /// A fresh optimizer and callbacks over the current trainable set, continued from `resume`
    /// when given.
    pub fn new(phase: &PhaseSpec, params: &ParamStore, resume: Option<&ResumeFrom>) -> Result<Self, TrainError> {
        let progress = EarlyStopping::new(phase.early_stopping.as_ref());
        let keep_best = progress.restore_best_weights || phase.on_divergence == OnDivergence::RestoreBest;
        let mut state = Self {
            optimizer: Optimizer::new(&phase.optimizer, params)?,
            progress,
            plateau: phase.reduce_lr_on_plateau.as_ref().map(ReduceLrOnPlateau::new),
            keep_best,
            best_weights: None,
            best_epoch: None,
            start_weights: None,
            epochs_done: 0,
            stopped_early: false,
        };
        if let Some(r) = resume {
            let s = &r.state;
            state.epochs_done = s.epochs_done;
            state.stopped_early = s.stopped_early;
            if !state.finished(phase) {
                state.optimizer.import(&load_weights(&r.optimizer)?)?;
            }
            state.optimizer.set_learning_rate(s.learning_rate);
            state.progress.tracker.best = s.best_monitored;
            state.progress.tracker.wait = s.epochs_without_improvement;
            if let Some(p) = state.plateau.as_mut() {
                p.tracker.best = s.plateau_best;
                p.tracker.wait = s.plateau_wait;
            }
            state.best_epoch = s.best_epoch;
            if keep_best {
                state.best_weights = r.phase_best_weights.as_ref().map(load_weights).transpose()?;
            }
        }
        if phase.on_divergence == OnDivergence::RestoreBest && state.best_weights.is_none() {
            state.start_weights = Some(params.snapshot()?);
        }
        Ok(state)
    }

    /// Whether the phase has run all its epochs or early stopping ended it.
    pub fn finished(&self, phase: &PhaseSpec) -> bool {
        self.epochs_done >= phase.epochs || self.stopped_early
    }

    /// The callbacks' verdict on a finished epoch: best weights, learning-rate cut, stop.
    pub fn end_epoch(
        &mut self,
        phase: &PhaseSpec,
        epoch: u32,
        train: &Metrics,
        validation: Option<&Metrics>,
        params: &ParamStore,
    ) -> Result<(), TrainError> {
        if self.progress.tracker.update(train, validation) {
            self.best_epoch = Some(epoch);
            if self.keep_best {
                self.best_weights = Some(params.snapshot()?);
            }
        }
        if let Some(p) = self.plateau.as_mut() {
            if let Some(new_lr) = p.update(train, validation, self.optimizer.learning_rate()) {
                self.optimizer.set_learning_rate(new_lr);
            }
        }
        self.stopped_early = self.progress.should_stop() && epoch < phase.epochs;
        self.epochs_done = epoch;
        Ok(())
    }

    /// What a checkpoint written now records to resume from.
    pub fn resume_state(&self, phase_index: usize, global_step: u64) -> ResumeState {
        ResumeState {
            phase_index,
            epochs_done: self.epochs_done,
            global_step,
            learning_rate: self.optimizer.learning_rate(),
            best_monitored: self.progress.tracker.best,
            epochs_without_improvement: self.progress.tracker.wait,
            plateau_wait: self.plateau.as_ref().map_or(0, |p| p.tracker.wait),
            stopped_early: self.stopped_early,
            plateau_best: self.plateau.as_ref().and_then(|p| p.tracker.best),
            best_epoch: self.best_epoch,
        }
    }

    /// The weights the phase ends with, loaded into `params`: after a divergence its best (or
    /// starting) ones, else its best when early stopping restores them. Returns the epoch
    /// restored, if any, and whether anything was loaded at all.
    pub fn restore(&self, diverged: bool, params: &ParamStore) -> Result<(Option<u32>, bool), TrainError> {
        match (&self.best_weights, diverged, self.progress.restore_best_weights) {
            (Some(best), true, _) | (Some(best), false, true) => {
                params.load(best, |_| true)?;
                Ok((self.best_epoch, true))
            }
            (None, true, _) => {
                let start = self.start_weights.as_ref().expect("restore_best keeps the phase's starting weights");
                params.load(start, |_| true)?;
                Ok((None, true))
            }
            _ => Ok((None, false)),
        }
    }
}
