//! Losses and accuracy for the two head layouts: one logit with binary cross-entropy (two
//! classes), or one logit per class with softmax cross-entropy. Both work on logits in a
//! numerically stable form, so extreme logits give finite losses and gradients.

use candle_core::{DType, Tensor};

use super::job::TrainError;

/// Which loss the head's unit count implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// `units = 1`, two classes: label 1 is the positive class.
    Binary,
    /// `units = classes`.
    Softmax,
}

impl LossKind {
    /// Mean loss over the batch, as a scalar tensor that backward can start from.
    /// `logits`: `[batch, units]`; `labels`: class indices.
    pub fn loss(self, logits: &Tensor, labels: &[u32]) -> Result<Tensor, TrainError> {
        let device = logits.device();
        match self {
            LossKind::Binary => {
                let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
                let y = Tensor::from_vec(y, labels.len(), device)?;
                Ok(bce_with_logits(&logits.flatten_all()?, &y)?.mean_all()?)
            }
            LossKind::Softmax => {
                let y = Tensor::from_slice(labels, labels.len(), device)?;
                // log_softmax subtracts the max first, so large logits don't overflow.
                Ok(candle_nn::loss::cross_entropy(logits, &y)?)
            }
        }
    }

    /// Number of correct predictions in the batch.
    pub fn correct(self, logits: &Tensor, labels: &[u32]) -> Result<usize, TrainError> {
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        Ok(logits
            .iter()
            .zip(labels)
            .filter(|(row, &label)| {
                let predicted = match self {
                    LossKind::Binary => u32::from(row[0] > 0.0),
                    LossKind::Softmax => argmax(row) as u32,
                };
                predicted == label
            })
            .count())
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Element-wise binary cross-entropy on logits `x` against targets `y` in {0, 1}:
/// `max(x, 0) - x*y + log(1 + exp(-|x|))`, which never exponentiates a positive number.
pub fn bce_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor, TrainError> {
    let softplus_neg_abs = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((x.relu()? - (x * y)?)? + softplus_neg_abs)?)
}
