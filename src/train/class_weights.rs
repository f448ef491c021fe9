//! Class weights of the training loss (`JobSpec::class_weights`), as Keras's `class_weight`:
//! the spec's form and the one weight per class it resolves to.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// See [`JobSpec::class_weights`](crate::train::JobSpec::class_weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ClassWeights {
    Balanced(Balanced),
    PerClass(std::collections::BTreeMap<String, f64>),
}

/// `"balanced"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balanced {
    Balanced,
}

impl ClassWeights {
    /// One weight per class (in label order), from the training set's labels.
    pub fn resolve(&self, classes: &[String], train_labels: impl Iterator<Item = usize>) -> Vec<f64> {
        match self {
            ClassWeights::Balanced(_) => {
                let mut counts = vec![0usize; classes.len()];
                let mut n = 0usize;
                for label in train_labels {
                    if let Some(c) = counts.get_mut(label) {
                        *c += 1;
                        n += 1;
                    }
                }
                // A class without training images contributes no loss: its weight is moot.
                counts.iter().map(|&c| if c == 0 { 1.0 } else { n as f64 / (classes.len() * c) as f64 }).collect()
            }
            ClassWeights::PerClass(map) => classes.iter().map(|c| map.get(c).copied().unwrap_or(1.0)).collect(),
        }
    }
}
