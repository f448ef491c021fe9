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

    /// [`LossKind::loss`] with each image's loss multiplied by the weight of its class
    /// (`class_weights`, one per class), still divided by the batch size (as Keras's
    /// `class_weight`).
    pub fn weighted_loss(
        self,
        logits: &Tensor,
        labels: &[u32],
        class_weights: Option<&[f32]>,
    ) -> Result<Tensor, TrainError> {
        let Some(weights) = class_weights else { return self.loss(logits, labels) };
        let device = logits.device();
        let w: Vec<f32> = labels.iter().map(|&l| weights.get(l as usize).copied().unwrap_or(1.0)).collect();
        let w = Tensor::from_vec(w, labels.len(), device)?;
        let per_image = match self {
            LossKind::Binary => {
                let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
                let y = Tensor::from_vec(y, labels.len(), device)?;
                bce_with_logits(&logits.flatten_all()?, &y)?
            }
            LossKind::Softmax => {
                let y = Tensor::from_slice(labels, (labels.len(), 1), device)?;
                let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
                log_p.gather(&y, 1)?.flatten_all()?.neg()?
            }
        };
        Ok((per_image * w)?.mean_all()?)
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
    fn class_weights_scale_each_image_and_keep_the_batch_mean() {
        let dev = Device::Cpu;
        let scalar = |t: Tensor| t.to_scalar::<f32>().unwrap();
        let binary = Tensor::new(&[[0.3f32], [-1.2], [2.0]], &dev).unwrap();
        let labels = [1u32, 0, 0];
        let plain = scalar(LossKind::Binary.loss(&binary, &labels).unwrap());
        let ones = scalar(LossKind::Binary.weighted_loss(&binary, &labels, Some(&[1.0, 1.0])).unwrap());
        assert!((plain - ones).abs() < 1e-6, "{plain} {ones}");
        let per: Vec<f32> =
            bce_with_logits(&binary.flatten_all().unwrap(), &Tensor::new(&[1f32, 0., 0.], &dev).unwrap())
                .unwrap()
                .to_vec1()
                .unwrap();
        let weighted = scalar(LossKind::Binary.weighted_loss(&binary, &labels, Some(&[0.5, 3.0])).unwrap());
        let expected = (3.0 * per[0] + 0.5 * per[1] + 0.5 * per[2]) / 3.0;
        assert!((weighted - expected).abs() < 1e-6, "{weighted} {expected}");

        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.1, 0.2, 0.3]], &dev).unwrap();
        let labels = [0u32, 2];
        let plain = scalar(LossKind::Softmax.loss(&logits, &labels).unwrap());
        let ones = scalar(LossKind::Softmax.weighted_loss(&logits, &labels, Some(&[1.0; 3])).unwrap());
        assert!((plain - ones).abs() < 1e-6, "{plain} {ones}");
        let p = LossKind::Softmax.probabilities(&logits).unwrap();
        let weighted = scalar(LossKind::Softmax.weighted_loss(&logits, &labels, Some(&[2.0, 1.0, 0.25])).unwrap());
        let expected = (-2.0 * p[0][0].ln() - 0.25 * p[1][2].ln()) / 2.0;
        assert!((weighted - expected).abs() < 1e-5, "{weighted} {expected}");
    }

    #[test]
    fn balanced_weights_as_sklearn() {
        use crate::train::spec::{Balanced, ClassWeights};
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // 6 images: 3 a, 2 b, 1 c → 6 / (3 * count).
        let labels = [0usize, 0, 0, 1, 1, 2];
        let w = ClassWeights::Balanced(Balanced::Balanced).resolve(&classes, labels.into_iter());
        assert_eq!(w, vec![6.0 / 9.0, 1.0, 2.0]);
        let map = ClassWeights::PerClass([("c".to_string(), 4.0)].into_iter().collect());
        assert_eq!(map.resolve(&classes, labels.into_iter()), vec![1.0, 1.0, 4.0]);
        // A class without training images (it adds no loss) keeps weight 1; the others still
        // divide by all three classes.
        let w = ClassWeights::Balanced(Balanced::Balanced).resolve(&classes, [0usize, 1].into_iter());
        assert_eq!(w, vec![2.0 / 3.0, 2.0 / 3.0, 1.0]);
    }

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
