//! Per-phase callbacks on the monitored metric: early stopping (with restore of the phase's best
//! weights) and reduce-learning-rate-on-plateau, with Keras's improvement rules.
//!
//! The monitored value is the validation loss or accuracy; when the job has no validation set
//! the training loss or accuracy stands in for it, so the callbacks still work (on a weaker
//! signal). Early stopping restores the phase's best weights when the phase ends, whether or
//! not it stopped early (unlike Keras, see keras#12511 / #20323).

use crate::train::job::Metrics;
use crate::train::spec::{EarlyStoppingSpec, Monitor, ReduceLrSpec};

/// The value a monitor watches, and whether lower is better.
pub fn monitored(monitor: Monitor, train: &Metrics, validation: Option<&Metrics>) -> (f64, bool) {
    let m = validation.unwrap_or(train);
    match monitor {
        Monitor::ValLoss => (m.loss, true),
        Monitor::ValAccuracy => (m.accuracy, false),
    }
}

/// Best value so far and epochs since it improved by more than `min_delta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    pub monitor: Monitor,
    pub min_delta: f64,
    pub best: Option<f64>,
    pub wait: u32,
}

impl Tracker {
    pub fn new(monitor: Monitor, min_delta: f64) -> Self {
        Self { monitor, min_delta: min_delta.abs(), best: None, wait: 0 }
    }

    /// Records an epoch's metrics; true when the value improved (then `wait` is 0).
    pub fn update(&mut self, train: &Metrics, validation: Option<&Metrics>) -> bool {
        let (value, lower_is_better) = monitored(self.monitor, train, validation);
        let improved = match self.best {
            None => value.is_finite(),
            Some(best) if lower_is_better => value < best - self.min_delta,
            Some(best) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        improved
    }
}

/// Early stopping of one phase. Without a spec it still tracks the validation loss (for
/// `epochs_without_improvement` and best-checkpoint bookkeeping) but never stops or restores.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    pub tracker: Tracker,
    pub patience: Option<u32>,
    pub restore_best_weights: bool,
}

impl EarlyStopping {
    pub fn new(spec: Option<&EarlyStoppingSpec>) -> Self {
        match spec {
            Some(spec) => Self {
                tracker: Tracker::new(spec.monitor, spec.min_delta),
                patience: Some(spec.patience),
                restore_best_weights: spec.restore_best_weights,
            },
            None => Self { tracker: Tracker::new(Monitor::ValLoss, 0.0), patience: None, restore_best_weights: false },
        }
    }

    /// Whether the phase should stop now (after `update`). Patience 0 stops at the first epoch
    /// without improvement, as Keras's.
    pub fn should_stop(&self) -> bool {
        self.patience.is_some_and(|p| self.tracker.wait >= p.max(1))
    }
}

/// Reduce-on-plateau of one phase.
#[derive(Debug, Clone)]
pub struct ReduceLrOnPlateau {
    pub tracker: Tracker,
    pub factor: f64,
    pub patience: u32,
    pub min_lr: f64,
}

impl ReduceLrOnPlateau {
    pub fn new(spec: &ReduceLrSpec) -> Self {
        Self {
            tracker: Tracker::new(spec.monitor, spec.min_delta),
            factor: spec.factor,
            patience: spec.patience,
            min_lr: spec.min_lr,
        }
    }

    /// Records an epoch; returns the new learning rate when it is cut. After a cut the wait
    /// starts over, as Keras's (cooldown 0).
    pub fn update(&mut self, train: &Metrics, validation: Option<&Metrics>, lr: f64) -> Option<f64> {
        self.tracker.update(train, validation);
        if self.tracker.wait >= self.patience.max(1) {
            self.tracker.wait = 0;
            if lr > self.min_lr {
                return Some((lr * self.factor).max(self.min_lr));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(loss: f64) -> Metrics {
        Metrics { loss, accuracy: 1.0 - loss }
    }

    #[test]
    fn early_stopping_counts_epochs_without_improvement() {
        let spec =
            EarlyStoppingSpec { monitor: Monitor::ValLoss, patience: 2, min_delta: 0.01, restore_best_weights: true };
        let mut es = EarlyStopping::new(Some(&spec));
        assert!(es.tracker.update(&m(9.0), Some(&m(1.0))));
        assert!(!es.tracker.update(&m(9.0), Some(&m(0.995))), "within min_delta is no improvement");
        assert!(!es.should_stop());
        assert!(!es.tracker.update(&m(9.0), Some(&m(1.2))));
        assert!(es.should_stop());
        assert_eq!(es.tracker.best, Some(1.0));
    }

    #[test]
    fn accuracy_monitor_prefers_higher_and_falls_back_to_training() {
        let mut t = Tracker::new(Monitor::ValAccuracy, 0.0);
        assert!(t.update(&m(0.5), None));
        assert!(t.update(&m(0.4), None), "training accuracy 0.6 beats 0.5");
        assert!(!t.update(&m(0.45), None));
    }

    #[test]
    fn plateau_cuts_learning_rate_down_to_min() {
        let spec = ReduceLrSpec { monitor: Monitor::ValLoss, factor: 0.1, patience: 1, min_delta: 0.0, min_lr: 1e-4 };
        let mut p = ReduceLrOnPlateau::new(&spec);
        assert_eq!(p.update(&m(1.0), Some(&m(1.0)), 1e-2), None);
        assert_eq!(p.update(&m(1.0), Some(&m(1.0)), 1e-2), Some(1e-3));
        assert_eq!(p.update(&m(1.0), Some(&m(1.0)), 1e-3), Some(1e-4));
        assert_eq!(p.update(&m(1.0), Some(&m(1.0)), 1e-4), None);
    }
}
