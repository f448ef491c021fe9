//! How one forward pass runs: training or inference behaviour, gradients, the dropout stream,
//! and which implementation of the convolution and pooling ops is used.

use rand_chacha::ChaCha8Rng;

/// Keras's BatchNormalization defaults.
pub const BN_MOMENTUM: f64 = 0.99;
pub const BN_EPSILON: f64 = 1e-3;
/// PyTorch's BatchNorm2d epsilon (torchvision weights were trained with it).
pub const TORCH_BN_EPSILON: f64 = 1e-5;

/// Which implementation the convolution, pooling and batch-norm layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The kernels of `train::kernels`: the default, and the only one the service uses.
    #[default]
    Fast,
    /// candle's stock ops (and the shifted-view reference ops of `nn::ops`): for benchmarks
    /// and as the reference of tests.
    Stock,
}

/// How a forward pass runs.
#[derive(Debug)]
pub struct ForwardCtx {
    /// Dropout active (training steps only).
    pub dropout: bool,
    /// Batch norm uses batch statistics and updates the moving ones.
    pub bn_training: bool,
    /// Trainable parameters track gradients; off for evaluation so no graph is built at all.
    pub grad: bool,
    /// Draws dropout masks.
    pub rng: ChaCha8Rng,
    pub backend: Backend,
}

impl ForwardCtx {
    /// Inference: batch norm on its moving statistics, no dropout, no graph. The rng is unused
    /// with dropout off.
    pub fn inference() -> Self {
        Self::new(false, false, false, crate::train::rng::rng(0, crate::train::rng::Stream::Dropout, 0, 0, 0))
    }

    /// A pass on the default backend.
    pub fn new(dropout: bool, bn_training: bool, grad: bool, rng: ChaCha8Rng) -> Self {
        Self { dropout, bn_training, grad, rng, backend: Backend::Fast }
    }
}
