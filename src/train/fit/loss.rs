//! Losses and accuracy for the two head layouts: one logit with binary cross-entropy (two
//! classes), or one logit per class with softmax cross-entropy. Both work on logits in a
//! numerically stable form, so extreme logits give finite losses and gradients.

use candle_core::{DType, Tensor};

use crate::train::error::TrainError;

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

    /// Per image, the probability of each class: one logit gives `[1 - p, p]` (sigmoid),
    /// several a softmax.
    pub fn probabilities(self, logits: &Tensor) -> Result<Vec<Vec<f32>>, TrainError> {
        let logits = logits.to_dtype(DType::F32)?;
        Ok(match self {
            LossKind::Binary => {
                let p: Vec<f32> = candle_nn::ops::sigmoid(&logits.flatten_all()?)?.to_vec1()?;
                p.into_iter().map(|p| vec![1.0 - p, p]).collect()
            }
            LossKind::Softmax => candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?,
        })
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn bce_is_finite_for_extreme_logits_and_matches_the_formula() {
        let x = Var::new(&[1e4f32, -1e4, 1e4, -1e4, 0.0, 2.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1f32, 0., 0., 1., 1., 0.], &Device::Cpu).unwrap();
        let loss = bce_with_logits(x.as_tensor(), &y).unwrap();
        let v: Vec<f32> = loss.to_vec1().unwrap();
        assert_eq!(&v[..4], &[0.0, 0.0, 1e4, 1e4]);
        assert!((v[4] - std::f32::consts::LN_2).abs() < 1e-6);
        assert!((v[5] - (2.0 + (-2.0f32).exp().ln_1p())).abs() < 1e-5);
        let grads = loss.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = grads.get(x.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(g.iter().all(|g| g.is_finite()), "{g:?}");
    }

    #[test]
    fn softmax_cross_entropy_is_stable_and_accuracy_counts() {
        let logits = Tensor::new(&[[1e4f32, -1e4], [0.0, 0.0], [-3.0, 5.0]], &Device::Cpu).unwrap();
        let loss = LossKind::Softmax.loss(&logits, &[0, 1, 1]).unwrap().to_scalar::<f32>().unwrap();
        assert!(loss.is_finite());
        assert_eq!(LossKind::Softmax.correct(&logits, &[0, 1, 1]).unwrap(), 2);
        let one = Tensor::new(&[[3f32], [-1.0], [0.5]], &Device::Cpu).unwrap();
        assert_eq!(LossKind::Binary.correct(&one, &[1, 0, 0]).unwrap(), 2);
    }
}
