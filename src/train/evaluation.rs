//! What a classifier gets right and wrong on a held-out set, beyond loss and accuracy: the
//! confusion matrix, precision / recall / F1 / support per class, ROC-AUC and PR-AUC for two
//! classes, top-5 accuracy for more than five. Computed from each image's true class and class
//! probabilities, the same numbers scikit-learn's `confusion_matrix`,
//! `precision_recall_fscore_support` (`zero_division=0`), `roc_auc_score` and
//! `average_precision_score` give.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How many of the highest-loss images an evaluation lists.
pub const WORST: usize = 12;

/// One of the images the model got most wrong (highest loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Example {
    /// Its position in the evaluated set.
    pub position: usize,
    /// The file, as `class folder/file name`.
    pub file: String,
    pub true_class: String,
    pub predicted_class: String,
    /// The model's probability of the predicted class.
    pub probability: f64,
    /// The model's probability of the true class.
    pub true_probability: f64,
    /// Its cross-entropy loss, `-ln(true_probability)`.
    pub loss: f64,
}

/// One class's row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassMetrics {
    pub class: String,
    /// Of the images predicted as this class, the fraction that are (0 when none is).
    pub precision: f64,
    /// Of the images of this class, the fraction predicted as it (0 when there are none).
    pub recall: f64,
    /// The harmonic mean of precision and recall (0 when both are).
    pub f1: f64,
    /// Images of this class in the set.
    pub support: u64,
}

/// The evaluation of one model on one set of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: u64,
    pub accuracy: f64,
    /// `confusion_matrix[t][p]`: images of true class `t` predicted as class `p`, both in the
    /// order of the job's `classes`.
    pub confusion_matrix: Vec<Vec<u64>>,
    pub per_class: Vec<ClassMetrics>,
    /// Two classes only, the second being the positive one: the area under the ROC curve.
    /// Absent when the set holds only one of the classes (the curve is undefined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Two classes only: the area under the precision-recall curve, as average precision.
    /// Absent when the set holds no positive image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr_auc: Option<f64>,
    /// More than five classes only: the fraction whose true class is among the five likeliest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top5_accuracy: Option<f64>,
    /// The images with the highest loss, worst first (at most 12).
    #[serde(default)]
    pub worst: Vec<Example>,
}

/// The evaluations of one model's weights on the validation and the test set (each `None` when
/// there is no such set, or when it was not run on these weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evaluations {
    pub validation: Option<Evaluation>,
    pub test: Option<Evaluation>,
}

/// Accumulates images one by one, then reports.
#[derive(Debug, Clone)]
pub struct Evaluator {
    classes: Vec<String>,
    labels: Vec<u32>,
    /// Per image, the probability of each class.
    probabilities: Vec<Vec<f32>>,
}

impl Evaluator {
    pub fn new(classes: &[String]) -> Self {
        Self { classes: classes.to_vec(), labels: Vec::new(), probabilities: Vec::new() }
    }

    /// One image: its true class and the model's probability for each class.
    pub fn add(&mut self, label: u32, probabilities: Vec<f32>) {
        self.labels.push(label);
        self.probabilities.push(probabilities);
    }

    pub fn finish(&self) -> Evaluation {
        let k = self.classes.len();
        let n = self.labels.len();
        let mut matrix = vec![vec![0u64; k]; k];
        let mut top5 = 0u64;
        for (&label, p) in self.labels.iter().zip(&self.probabilities) {
            let predicted = argmax(p);
            if let Some(row) = matrix.get_mut(label as usize) {
                if let Some(cell) = row.get_mut(predicted) {
                    *cell += 1;
                }
            }
            let truth = p.get(label as usize).copied().unwrap_or(f32::NEG_INFINITY);
            // Ties go the way of the true class, as sklearn's top_k_accuracy_score breaks none.
            if p.iter().filter(|&&q| q > truth).count() < 5 {
                top5 += 1;
            }
        }
        let correct: u64 = (0..k).map(|c| matrix[c][c]).sum();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class = (0..k)
            .map(|c| {
                let support: u64 = matrix[c].iter().sum();
                let predicted: u64 = matrix.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(matrix[c][c], predicted), ratio(matrix[c][c], support));
                let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
                ClassMetrics { class: self.classes[c].clone(), precision, recall, f1, support }
            })
            .collect();
        let (roc_auc, pr_auc) = if k == 2 {
            let scored: Vec<(f32, bool)> = self
                .labels
                .iter()
                .zip(&self.probabilities)
                .map(|(&l, p)| (p.get(1).copied().unwrap_or(0.0), l == 1))
                .collect();
            (roc_auc(&scored), average_precision(&scored))
        } else {
            (None, None)
        };
        let mut losses: Vec<(usize, f64)> = self
            .labels
            .iter()
            .zip(&self.probabilities)
            .enumerate()
            .map(|(i, (&l, p))| {
                let truth = f64::from(p.get(l as usize).copied().unwrap_or(0.0));
                (i, -(truth.max(1e-12).ln()))
            })
            .collect();
        losses.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let name = |c: usize| self.classes.get(c).cloned().unwrap_or_default();
        let worst = losses
            .into_iter()
            .take(WORST)
            .map(|(i, loss)| {
                let (p, label) = (&self.probabilities[i], self.labels[i] as usize);
                let predicted = argmax(p);
                Example {
                    position: i,
                    file: String::new(),
                    true_class: name(label),
                    predicted_class: name(predicted),
                    probability: f64::from(p[predicted]),
                    true_probability: f64::from(p.get(label).copied().unwrap_or(0.0)),
                    loss,
                }
            })
            .collect();
        Evaluation {
            worst,
            images: n as u64,
            accuracy: ratio(correct, n as u64),
            confusion_matrix: matrix,
            per_class,
            roc_auc,
            pr_auc,
            top5_accuracy: (k > 5).then(|| ratio(top5, n as u64)),
        }
    }
}

/// The first index of the largest value (what `argmax` of the logits gives).
fn argmax(p: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in p.iter().enumerate() {
        if v > p[best] {
            best = i;
        }
    }
    best
}

/// Scores sorted by decreasing score, grouped into runs of equal score: `(positives, negatives)`
/// per distinct threshold.
fn runs(scored: &[(f32, bool)]) -> Vec<(u64, u64)> {
    let mut sorted = scored.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut last = None;
    for (score, positive) in sorted {
        if last != Some(score) {
            out.push((0, 0));
            last = Some(score);
        }
        let run = out.last_mut().expect("pushed above");
        if positive {
            run.0 += 1;
        } else {
            run.1 += 1;
        }
    }
    out
}

/// The probability that a random positive scores above a random negative (ties count half).
fn roc_auc(scored: &[(f32, bool)]) -> Option<f64> {
    let (pos, neg) = scored.iter().fold((0u64, 0u64), |(p, n), &(_, y)| if y { (p + 1, n) } else { (p, n + 1) });
    if pos == 0 || neg == 0 {
        return None;
    }
    let (mut above_negatives, mut area) = (0u64, 0.0f64);
    // Walk from the lowest score up: each positive beats the negatives below it.
    for (p, n) in runs(scored).into_iter().rev() {
        area += p as f64 * (above_negatives as f64 + n as f64 / 2.0);
        above_negatives += n;
    }
    Some(area / (pos as f64 * neg as f64))
}

/// Σ (Rₙ − Rₙ₋₁) Pₙ over the distinct thresholds, highest first.
fn average_precision(scored: &[(f32, bool)]) -> Option<f64> {
    let pos = scored.iter().filter(|s| s.1).count() as u64;
    if pos == 0 {
        return None;
    }
    let (mut tp, mut fp, mut ap) = (0u64, 0u64, 0.0f64);
    for (p, n) in runs(scored) {
        tp += p;
        fp += n;
        ap += (p as f64 / pos as f64) * (tp as f64 / (tp + fp) as f64);
    }
    Some(ap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn two_classes_as_sklearn() {
        // y_true = [0, 0, 1, 1, 1], scores = [0.1, 0.6, 0.4, 0.8, 0.8]: of the 6 (positive,
        // negative) pairs, the positive scores higher in 5 (all but 0.4 vs 0.6).
        let mut e = Evaluator::new(&classes(2));
        for (label, p) in [(0, 0.1f32), (0, 0.6), (1, 0.4), (1, 0.8), (1, 0.8)] {
            e.add(label, vec![1.0 - p, p]);
        }
        let r = e.finish();
        assert_eq!(r.confusion_matrix, vec![vec![1, 1], vec![1, 2]]);
        assert_eq!(r.accuracy, 0.6);
        assert_eq!((r.per_class[1].precision, r.per_class[1].recall), (2.0 / 3.0, 2.0 / 3.0));
        assert_eq!((r.per_class[0].support, r.per_class[1].support), (2, 3));
        assert!((r.roc_auc.unwrap() - 5.0 / 6.0).abs() < 1e-12, "{:?}", r.roc_auc);
        // Thresholds 0.8 (tp 2, fp 0: P 1, ΔR 2/3), 0.6 (tp 2, fp 1: ΔR 0), 0.4 (tp 3, fp 1:
        // P 3/4, ΔR 1/3), 0.1 (ΔR 0): 2/3 + 1/4.
        assert!((r.pr_auc.unwrap() - (2.0 / 3.0 + 0.25)).abs() < 1e-12, "{:?}", r.pr_auc);
        assert_eq!(r.top5_accuracy, None);
    }

    #[test]
    fn undefined_curves_are_absent_and_empty_classes_score_zero() {
        let mut e = Evaluator::new(&classes(2));
        e.add(0, vec![0.9, 0.1]);
        e.add(0, vec![0.8, 0.2]);
        let r = e.finish();
        assert_eq!((r.roc_auc, r.pr_auc), (None, None));
        assert_eq!((r.per_class[1].precision, r.per_class[1].recall, r.per_class[1].f1), (0.0, 0.0, 0.0));
        assert_eq!(r.per_class[0].recall, 1.0);
        let empty = Evaluator::new(&classes(3)).finish();
        assert_eq!((empty.images, empty.accuracy), (0, 0.0));
    }

    #[test]
    fn top5_with_more_than_five_classes() {
        let mut e = Evaluator::new(&classes(7));
        // True class 6 is the 6th likeliest: a top-5 miss; true class 0 the 2nd: a hit.
        e.add(6, vec![0.3, 0.25, 0.2, 0.1, 0.08, 0.02, 0.05]);
        e.add(0, vec![0.3, 0.4, 0.1, 0.1, 0.05, 0.03, 0.02]);
        let r = e.finish();
        assert_eq!(r.top5_accuracy, Some(0.5));
        assert_eq!(r.confusion_matrix[6][0], 1);
        assert_eq!(r.confusion_matrix[0][1], 1);
        assert_eq!(r.accuracy, 0.0);
    }
}
