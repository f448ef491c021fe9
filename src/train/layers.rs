//! The layer set: what each layer is (Keras class, weights, output shape) and its forward pass.
//!
//! Layers are data ([`Layer`]: a name and a [`LayerKind`]); their parameters live in the
//! [`ParamStore`] under `<layer name>.<weight name>`. Tensors are NCHW inside (candle's conv
//! layout); shapes reported to people are channels-last as Keras shows them. Conv kernels are
//! stored as candle wants them, `[out, in, kh, kw]`; dense kernels as Keras does, `[in, out]`.
//! More kinds (depthwise and separable convs, ReLU6, TF-"SAME" padding) slot in here.

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::job::TrainError;
use super::params::{ParamStore, Role};

/// Keras's BatchNormalization defaults.
pub const BN_MOMENTUM: f64 = 0.99;
pub const BN_EPSILON: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// Square kernel, symmetric zero padding.
    Conv2d { in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize, bias: bool },
    BatchNorm { channels: usize },
    Relu,
    /// Square window with stride equal to the window ("valid" padding).
    MaxPool { size: usize },
    GlobalAvgPool,
    Dropout { rate: f32 },
    Dense { inputs: usize, units: usize },
}

/// How a weight starts out (Keras's defaults per layer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)).
    GlorotUniform { fan_in: usize, fan_out: usize },
    Zeros,
    Ones,
}

/// One weight of a layer, before it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSpec {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub role: Role,
    pub init: Init,
}

/// A named layer and the shape it outputs (channels last, no batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub output_shape: Vec<usize>,
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
}

impl LayerKind {
    /// Keras's class name, as `model.summary()` prints it.
    pub fn keras_class(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "Conv2D",
            LayerKind::BatchNorm { .. } => "BatchNormalization",
            LayerKind::Relu => "ReLU",
            LayerKind::MaxPool { .. } => "MaxPooling2D",
            LayerKind::GlobalAvgPool => "GlobalAveragePooling2D",
            LayerKind::Dropout { .. } => "Dropout",
            LayerKind::Dense { .. } => "Dense",
        }
    }

    /// The layer's weights, trainable ones first as Keras lists them.
    pub fn weights(&self) -> Vec<WeightSpec> {
        let w = |name, shape: Vec<usize>, role, init| WeightSpec { name, shape, role, init };
        match *self {
            LayerKind::Conv2d { in_channels, out_channels, kernel, bias, .. } => {
                let area = kernel * kernel;
                let init = Init::GlorotUniform { fan_in: area * in_channels, fan_out: area * out_channels };
                let mut v = vec![w("kernel", vec![out_channels, in_channels, kernel, kernel], Role::Weight, init)];
                if bias {
                    v.push(w("bias", vec![out_channels], Role::Weight, Init::Zeros));
                }
                v
            }
            LayerKind::BatchNorm { channels } => vec![
                w("gamma", vec![channels], Role::Weight, Init::Ones),
                w("beta", vec![channels], Role::Weight, Init::Zeros),
                w("moving_mean", vec![channels], Role::Stat, Init::Zeros),
                w("moving_variance", vec![channels], Role::Stat, Init::Ones),
            ],
            LayerKind::Dense { inputs, units } => vec![
                w("kernel", vec![inputs, units], Role::Weight, Init::GlorotUniform { fan_in: inputs, fan_out: units }),
                w("bias", vec![units], Role::Weight, Init::Zeros),
            ],
            LayerKind::Relu | LayerKind::MaxPool { .. } | LayerKind::GlobalAvgPool | LayerKind::Dropout { .. } => {
                Vec::new()
            }
        }
    }

    pub fn param_count(&self) -> usize {
        self.weights().iter().map(|w| w.shape.iter().product::<usize>()).sum()
    }
}

impl Init {
    pub fn tensor(self, shape: &[usize], rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor, TrainError> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::GlorotUniform { fan_in, fan_out } => {
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                (0..n).map(|_| rng.gen_range(-limit..limit)).collect()
            }
        };
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

impl Layer {
    /// Runs the layer on `x` (NCHW for spatial layers, `[batch, features]` after pooling).
    pub fn forward(&self, x: &Tensor, params: &ParamStore, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        let name = self.name.as_str();
        Ok(match self.kind {
            LayerKind::Conv2d { stride, padding, bias, .. } => {
                let y = x.conv2d(&params.tensor(name, "kernel", ctx.grad)?, padding, stride, 1, 1)?;
                if bias {
                    let b = params.tensor(name, "bias", ctx.grad)?;
                    y.broadcast_add(&b.reshape((1, (), 1, 1))?)?
                } else {
                    y
                }
            }
            LayerKind::BatchNorm { channels } => batch_norm(x, name, channels, params, ctx)?,
            LayerKind::Relu => x.relu()?,
            LayerKind::MaxPool { size } => x.max_pool2d(size)?,
            // [batch, c, h, w] -> [batch, c]
            LayerKind::GlobalAvgPool => x.mean((2, 3))?,
            LayerKind::Dropout { rate } => {
                if ctx.dropout && rate > 0.0 {
                    let keep = 1.0 - rate;
                    let n = x.elem_count();
                    let mask: Vec<f32> =
                        (0..n).map(|_| if ctx.rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
                    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?
                } else {
                    x.clone()
                }
            }
            LayerKind::Dense { .. } => {
                let k = params.tensor(name, "kernel", ctx.grad)?;
                let b = params.tensor(name, "bias", ctx.grad)?;
                x.matmul(&k)?.broadcast_add(&b)?
            }
        })
    }
}

/// Batch normalisation over NCHW. Inference mode folds the moving statistics into a per-channel
/// scale and shift; training mode normalises with the batch's (biased) statistics and moves the
/// moving ones towards them as Keras does: `moving = moving * 0.99 + batch * 0.01`.
fn batch_norm(x: &Tensor, name: &str, c: usize, params: &ParamStore, ctx: &ForwardCtx) -> Result<Tensor, TrainError> {
    let (training, grad) = (ctx.bn_training, ctx.grad);
    let gamma = params.tensor(name, "gamma", grad)?.reshape((1, c, 1, 1))?;
    let beta = params.tensor(name, "beta", grad)?.reshape((1, c, 1, 1))?;
    if training {
        // [1, c, 1, 1]
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
        let y = centered.broadcast_div(&(var.clone() + BN_EPSILON)?.sqrt()?)?;
        for (stat, batch) in [("moving_mean", &mean), ("moving_variance", &var)] {
            let p = params
                .get(&format!("{name}.{stat}"))
                .ok_or_else(|| TrainError::Weights(format!("model has no parameter {name}.{stat}")))?;
            let moved = ((p.var.as_detached_tensor() * BN_MOMENTUM)?
                + (batch.detach().flatten_all()? * (1.0 - BN_MOMENTUM))?)?;
            p.var.set(&moved)?;
        }
        Ok(y.broadcast_mul(&gamma)?.broadcast_add(&beta)?)
    } else {
        let mean = params.tensor(name, "moving_mean", false)?.reshape((1, c, 1, 1))?;
        let var = params.tensor(name, "moving_variance", false)?.reshape((1, c, 1, 1))?;
        // [1, c, 1, 1]
        let scale = gamma.broadcast_div(&(var + BN_EPSILON)?.sqrt()?)?;
        let shift = beta.broadcast_sub(&mean.broadcast_mul(&scale)?)?;
        Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

/// f32 everywhere for now.
pub const DTYPE: DType = DType::F32;
