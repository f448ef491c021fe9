//! One optimisation step and the bookkeeping around steps: the loss for a head's shape, the
//! running sums of an epoch, the stop check. Split from [`crate::train::fit::fit`], which drives them.

use candle_core::Tensor;

use crate::train::error::TrainError;
use crate::train::fit::loss::LossKind;
use crate::train::fit::optim::Optimizer;
use crate::train::job::{Control, Metrics};
use crate::train::model::Model;
use crate::train::nn::ForwardCtx;
use crate::train::spec::SpecError;

/// Binary cross-entropy for one unit and two classes, softmax for one unit per class.
pub fn loss_kind(units: usize, classes: usize) -> Result<LossKind, TrainError> {
    match (units, classes) {
        (1, 2) => Ok(LossKind::Binary),
        (u, c) if u == c && c >= 2 => Ok(LossKind::Softmax),
        _ => Err(TrainError::Spec(SpecError::new(
            "model.head.units",
            format!("must be 1 (two classes) or the number of classes ({classes}); got {units}"),
        ))),
    }
}

/// One optimisation step on a batch: forward, loss, backward over the trainable weights only,
/// update. Returns the batch's mean loss and the logits (`[batch, units]`).
pub fn train_step(
    model: &Model,
    optimizer: &mut Optimizer,
    loss_kind: LossKind,
    x: &Tensor,
    labels: &[u32],
    ctx: &mut ForwardCtx,
) -> Result<(f64, Tensor), TrainError> {
    train_step_from(model, 0, optimizer, loss_kind, x, labels, ctx)
}

/// [`train_step`] from the output of the first `start` layers (cached features).
pub fn train_step_from(
    model: &Model,
    start: usize,
    optimizer: &mut Optimizer,
    loss_kind: LossKind,
    x: &Tensor,
    labels: &[u32],
    ctx: &mut ForwardCtx,
) -> Result<(f64, Tensor), TrainError> {
    train_step_weighted(model, start, optimizer, loss_kind, None, x, labels, ctx)
}

/// [`train_step_from`] with the loss of each image weighted by its class's weight.
#[allow(clippy::too_many_arguments)]
pub fn train_step_weighted(
    model: &Model,
    start: usize,
    optimizer: &mut Optimizer,
    loss_kind: LossKind,
    class_weights: Option<&[f32]>,
    x: &Tensor,
    labels: &[u32],
    ctx: &mut ForwardCtx,
) -> Result<(f64, Tensor), TrainError> {
    let logits = model.forward_from(start, x, ctx)?;
    let loss = loss_kind.weighted_loss(&logits, labels, class_weights)?;
    // The graph only reaches back to the first trainable weight: frozen parameters and the
    // input are detached leaves, so backward never walks the frozen prefix.
    let grads = loss.backward()?;
    optimizer.step(&grads)?;
    Ok((f64::from(loss.to_scalar::<f32>()?), logits.detach()))
}

pub(super) fn check_stop(control: &Control) -> Result<(), TrainError> {
    match control.stop_requested() {
        Some(reason) => Err(TrainError::Stopped(reason)),
        None => Ok(()),
    }
}

/// Running sums of an epoch's loss and accuracy.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sums {
    loss: f64,
    correct: usize,
    seen: usize,
}

impl Sums {
    pub(super) fn add(&mut self, loss: f64, correct: usize, n: usize) {
        self.loss += loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seen == 0
    }

    pub(super) fn metrics(&self) -> Metrics {
        let n = self.seen.max(1) as f64;
        Metrics { loss: self.loss / n, accuracy: self.correct as f64 / n }
    }
}
