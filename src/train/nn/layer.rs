//! The layer set: what each layer is (Keras class, weights, output shape) and its forward pass.
//!
//! Layers are data ([`Layer`]: a name and a [`LayerKind`]); their parameters live in the
//! [`ParamStore`] under `<layer name>.<weight name>`. Tensors are NCHW inside (candle's conv
//! layout); shapes reported to people are channels-last as Keras shows them. Conv kernels are
//! stored as candle wants them, `[out, in, kh, kw]` (depthwise ones `[c, 1, kh, kw]`); dense
//! kernels as Keras does, `[in, out]`. Weight names are Keras's (`kernel`, `depthwise_kernel`,
//! `pointwise_kernel`, `gamma`, ...). A layer normally takes the previous layer's output; one
//! with `inputs` takes named earlier outputs instead (residual connections).

use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::train::error::TrainError;
use crate::train::kernels::Act;
use crate::train::nn::batch_norm;
use crate::train::nn::ctx::ForwardCtx;
use crate::train::nn::ops::{self, Pad};
use crate::train::nn::params::{ParamStore, Role};

#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// Square kernel, zero padding per side (asymmetric for TensorFlow's "SAME" at stride 2).
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: Pad,
        bias: bool,
    },
    /// One `kernel` x `kernel` filter per channel (Keras `DepthwiseConv2D`, depth multiplier 1).
    DepthwiseConv2d {
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: Pad,
        bias: bool,
    },
    /// Depthwise then pointwise (1x1) convolution as ONE layer, as Keras's `SeparableConv2D`.
    SeparableConv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: Pad,
        bias: bool,
    },
    /// Keras `ZeroPadding2D`.
    ZeroPad(Pad),
    BatchNorm {
        channels: usize,
        epsilon: f64,
    },
    Relu,
    /// `min(max(x, 0), 6)`: Keras `ReLU(6.0)`.
    Relu6,
    /// Square window with stride equal to the window ("valid" padding).
    MaxPool {
        size: usize,
    },
    /// Overlapping window (`size` > `stride` allowed), padding that never wins the max.
    MaxPoolPadded {
        size: usize,
        stride: usize,
        padding: Pad,
    },
    /// Elementwise sum of the layer's two `inputs` (Keras `Add`).
    Add,
    GlobalAvgPool,
    Dropout {
        rate: f32,
    },
    Dense {
        inputs: usize,
        units: usize,
    },
}

/// How a weight starts out (Keras's defaults per layer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in ±sqrt(6 / (fan_in + fan_out)).
    GlorotUniform {
        fan_in: usize,
        fan_out: usize,
    },
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

/// A convolution with its following batch norm folded in.
#[derive(Debug, Clone)]
pub struct Folded {
    /// Which of the layer's kernels is replaced (`kernel`, `depthwise_kernel` or, for a separable
    /// convolution, `pointwise_kernel`: the one whose output channels the batch norm sees).
    pub weight: &'static str,
    /// The scaled kernel, same shape as the original (output channels first).
    pub kernel: Tensor,
    /// `[channels]`: replaces the convolution's bias (or adds one where it had none).
    pub bias: Tensor,
}

/// A named layer and the shape it outputs (channels last, no batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub output_shape: Vec<usize>,
    /// Names of the earlier layers whose outputs this one takes; empty: the previous layer's.
    pub inputs: Vec<String>,
}

/// What [`crate::train::graph`] merged into a layer's call (nothing, by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fusion<'a> {
    /// A frozen convolution's kernel and bias with the batch norm after it folded in.
    pub fold: Option<&'a Folded>,
    /// A `ZeroPadding2D` before the convolution, added to its own padding.
    pub pad: Pad,
    /// The activation layer after it.
    pub act: Act,
}

impl LayerKind {
    /// Keras's class name, as `model.summary()` prints it.
    pub fn keras_class(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "Conv2D",
            LayerKind::DepthwiseConv2d { .. } => "DepthwiseConv2D",
            LayerKind::SeparableConv2d { .. } => "SeparableConv2D",
            LayerKind::ZeroPad(_) => "ZeroPadding2D",
            LayerKind::BatchNorm { .. } => "BatchNormalization",
            LayerKind::Relu | LayerKind::Relu6 => "ReLU",
            LayerKind::MaxPool { .. } | LayerKind::MaxPoolPadded { .. } => "MaxPooling2D",
            LayerKind::Add => "Add",
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
            LayerKind::DepthwiseConv2d { channels, kernel, bias, .. } => {
                // Keras's fans for a (k, k, c, 1) kernel.
                let area = kernel * kernel;
                let init = Init::GlorotUniform { fan_in: area * channels, fan_out: area };
                let mut v = vec![w("depthwise_kernel", vec![channels, 1, kernel, kernel], Role::Weight, init)];
                if bias {
                    v.push(w("bias", vec![channels], Role::Weight, Init::Zeros));
                }
                v
            }
            LayerKind::SeparableConv2d { in_channels, out_channels, kernel, bias, .. } => {
                let area = kernel * kernel;
                let mut v = vec![
                    w(
                        "depthwise_kernel",
                        vec![in_channels, 1, kernel, kernel],
                        Role::Weight,
                        Init::GlorotUniform { fan_in: area * in_channels, fan_out: area },
                    ),
                    w(
                        "pointwise_kernel",
                        vec![out_channels, in_channels, 1, 1],
                        Role::Weight,
                        Init::GlorotUniform { fan_in: in_channels, fan_out: out_channels },
                    ),
                ];
                if bias {
                    v.push(w("bias", vec![out_channels], Role::Weight, Init::Zeros));
                }
                v
            }
            LayerKind::BatchNorm { channels, .. } => vec![
                w("gamma", vec![channels], Role::Weight, Init::Ones),
                w("beta", vec![channels], Role::Weight, Init::Zeros),
                w("moving_mean", vec![channels], Role::Stat, Init::Zeros),
                w("moving_variance", vec![channels], Role::Stat, Init::Ones),
            ],
            LayerKind::Dense { inputs, units } => vec![
                w("kernel", vec![inputs, units], Role::Weight, Init::GlorotUniform { fan_in: inputs, fan_out: units }),
                w("bias", vec![units], Role::Weight, Init::Zeros),
            ],
            LayerKind::ZeroPad(_)
            | LayerKind::Relu
            | LayerKind::Relu6
            | LayerKind::MaxPool { .. }
            | LayerKind::MaxPoolPadded { .. }
            | LayerKind::Add
            | LayerKind::GlobalAvgPool
            | LayerKind::Dropout { .. } => Vec::new(),
        }
    }

    /// Kernel size and own padding of a convolution (the layers that take extra padding and a
    /// fused bias and activation), `None` for other layers.
    pub fn conv_geometry(&self) -> Option<(usize, Pad)> {
        match *self {
            LayerKind::Conv2d { kernel, padding, .. }
            | LayerKind::DepthwiseConv2d { kernel, padding, .. }
            | LayerKind::SeparableConv2d { kernel, padding, .. } => Some((kernel, padding)),
            _ => None,
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
    /// A layer that takes the previous layer's output.
    pub fn new(name: impl Into<String>, kind: LayerKind, output_shape: Vec<usize>) -> Self {
        Self { name: name.into(), kind, output_shape, inputs: Vec::new() }
    }

    /// The same layer taking the outputs of `inputs` (earlier layer names) instead.
    pub fn with_inputs(mut self, inputs: &[&str]) -> Self {
        self.inputs = inputs.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs the layer on `x` (NCHW for spatial layers, `[batch, features]` after pooling).
    /// [`LayerKind::Add`] takes two inputs: see [`Layer::forward_add`].
    pub fn forward(&self, x: &Tensor, params: &ParamStore, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        self.forward_fused(x, params, ctx, Fusion::default())
    }

    /// As [`Layer::forward`], with what [`crate::train::graph`] merged into this layer: a convolution
    /// runs with its folded kernel and bias, the padding of a `ZeroPadding2D` before it, and
    /// the activation after it; a batch norm with the activation after it.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        params: &ParamStore,
        ctx: &mut ForwardCtx,
        fusion: Fusion<'_>,
    ) -> Result<Tensor, TrainError> {
        let name = self.name.as_str();
        let Fusion { fold, pad, act } = fusion;
        let conv = self.kind.conv_geometry().is_some();
        if act != Act::Identity && !(conv || matches!(self.kind, LayerKind::BatchNorm { .. }))
            || pad != Pad::default() && !conv
        {
            return Err(TrainError::Graph(format!(
                "{name}: {} cannot take a fused activation or padding",
                self.kind.keras_class()
            )));
        }
        let weight = |w: &str| match fold {
            Some(f) if f.weight == w => Ok(f.kernel.clone()),
            _ => params.tensor(name, w, ctx.grad),
        };
        let bias = |bias: bool| -> Result<Option<Tensor>, TrainError> {
            Ok(match fold {
                Some(f) => Some(f.bias.clone()),
                None if bias => Some(params.tensor(name, "bias", ctx.grad)?),
                None => None,
            })
        };
        Ok(match self.kind {
            LayerKind::Conv2d { stride, padding, bias: b, .. } => {
                ops::conv2d(ctx.backend, x, &weight("kernel")?, bias(b)?.as_ref(), act, stride, padding.plus(pad))?
            }
            LayerKind::DepthwiseConv2d { stride, padding, bias: b, .. } => ops::depthwise_conv(
                ctx.backend,
                x,
                &weight("depthwise_kernel")?,
                bias(b)?.as_ref(),
                act,
                stride,
                padding.plus(pad),
            )?,
            LayerKind::SeparableConv2d { padding, bias: b, .. } => {
                let dk = weight("depthwise_kernel")?;
                let pk = weight("pointwise_kernel")?;
                let y = ops::depthwise_conv(ctx.backend, x, &dk, None, Act::Identity, 1, padding.plus(pad))?;
                ops::conv2d(ctx.backend, &y, &pk, bias(b)?.as_ref(), act, 1, Pad::default())?
            }
            LayerKind::ZeroPad(p) => ops::pad(x, p, 0.0)?,
            LayerKind::BatchNorm { channels, epsilon } => {
                batch_norm::forward(x, name, channels, epsilon, act, params, ctx)?
            }
            LayerKind::Relu => x.relu()?,
            LayerKind::Relu6 => ops::relu6(ctx.backend, x)?,
            LayerKind::MaxPool { size } => ops::max_pool_valid(ctx.backend, x, size)?,
            LayerKind::MaxPoolPadded { size, stride, padding } => ops::max_pool(ctx.backend, x, size, stride, padding)?,
            LayerKind::Add => {
                return Err(TrainError::Graph(format!("{name}: an Add layer needs two inputs")));
            }
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
