//! Why training, a weights file or a spec check failed: the leaf every other part of `train`
//! reports through. Each variant keeps its cause, so the caller can log or map it without
//! parsing a message.

use std::path::PathBuf;

use crate::train::job::{Divergence, StopReason};
use crate::train::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Stopped at a batch boundary because [`Control`](crate::train::job::Control) asked.
    #[error("stopped: {0:?}")]
    Stopped(StopReason),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// A loss or a weight stopped being finite, in a phase whose spec said `fail`.
    #[error("{0}")]
    Diverged(Box<Divergence>),
    /// The images: too few, none decodable, a class missing from a set.
    #[error("data: {0}")]
    Data(String),
    /// A pretrained weights file or a checkpoint to resume from does not fit the model.
    #[error("weights: {0}")]
    Weights(#[from] WeightsError),
    /// A checkpoint or optimizer file that could not be read back.
    #[error("checkpoint {}: {source}", path.display())]
    CheckpointRead {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    /// Tensors that safetensors could not encode as a checkpoint file.
    #[error("encoding checkpoint {name}: {source}")]
    CheckpointEncode {
        name: String,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The model asked for a parameter its store does not hold (a bug in a model definition).
    #[error("model has no parameter {0}")]
    MissingParam(String),
    /// The layer graph is wired wrongly: an input that does not exist, an activation fused into a
    /// layer that cannot take one (a bug in a model definition or in fusion).
    #[error("model graph: {0}")]
    Graph(String),
    /// Saved optimizer state that does not match the parameters it is loaded for.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Why a weights file cannot be used for an architecture.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("not a readable safetensors file: {0}")]
    Unreadable(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("missing tensor `{tensor}` (expected shape {expected:?})")]
    Missing { tensor: String, expected: Vec<usize> },
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape { tensor: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("tensor `{tensor}` has dtype {dtype}, expected a float type")]
    Dtype { tensor: String, dtype: String },
    #[error("tensor `{tensor}` holds a NaN or infinite value")]
    NotFinite { tensor: String },
    #[error("invalid model: {0}")]
    Spec(#[from] SpecError),
}

impl WeightsError {
    /// The file's name of the offending tensor, when one is at fault.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            WeightsError::Missing { tensor, .. }
            | WeightsError::Shape { tensor, .. }
            | WeightsError::Dtype { tensor, .. }
            | WeightsError::NotFinite { tensor } => Some(tensor),
            _ => None,
        }
    }
}
