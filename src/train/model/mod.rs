//! Models: an architecture-dispatched backbone plus the classification head, as an ordered list
//! of named layers over a [`ParamStore`].
//!
//! The layer list is pure data computed from the spec ([`plan`]), so validation and the summary
//! need no tensors; [`Model::new`] then creates and initialises the parameters. Names are
//! `backbone.<layer>` / `head.<layer>`: small_cnn's are hierarchical (`backbone.block1.conv`),
//! MobileNetV2's and Xception's are Keras's own layer names (`backbone.block_3_depthwise`,
//! `backbone.block4_sepconv1_bn`). A phase's `trainable` selectors match them by prefix at a `.`
//! or `_` boundary, so `backbone.block_3` picks `backbone.block_3_expand_BN` but not
//! `backbone.block_13_expand`.
//!
//! Residual connections: a layer with `inputs` takes named earlier outputs instead of the
//! previous one; [`Model::forward`] keeps exactly the outputs that are referenced later.

pub mod efficientnet_lite0;
pub mod mobilenet_v2;
pub mod small_cnn;
mod summary;
pub mod xception;

pub use summary::summarize;

use std::collections::HashSet;

use candle_core::{Device, Tensor};

use crate::train::error::TrainError;
use crate::train::graph::{self, Folding};
use crate::train::nn::{
    Backend, ForwardCtx, Layer, LayerKind, ParamStore, Role, SamePadding, BN_EPSILON, TORCH_BN_EPSILON,
};
use crate::train::rng::{self, Stream};
use crate::train::spec::{Architecture, InputSpec, ModelSpec, PhaseSpec, SpecError};

/// The numerics the weights were trained with, which the forward pass must reproduce: batch-norm
/// epsilon and how "same" padding splits at stride 2. Shapes and parameter counts are the same
/// under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    /// Keras/TensorFlow: epsilon 1e-3, "SAME" padding heavier at the bottom/right.
    #[default]
    Keras,
    /// PyTorch/torchvision: epsilon 1e-5, symmetric padding.
    Torchvision,
}

impl Convention {
    pub fn bn_epsilon(self) -> f64 {
        match self {
            Convention::Keras => BN_EPSILON,
            Convention::Torchvision => TORCH_BN_EPSILON,
        }
    }

    pub fn same_padding(self) -> SamePadding {
        match self {
            Convention::Keras => SamePadding::TensorFlow,
            Convention::Torchvision => SamePadding::Symmetric,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Convention::Keras => "keras",
            Convention::Torchvision => "torchvision",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keras" => Some(Convention::Keras),
            "torchvision" => Some(Convention::Torchvision),
            _ => None,
        }
    }
}

/// An error naming `input.height` or `input.width` when either is under `min` pixels, the least
/// `architecture` takes.
pub fn check_min_side(architecture: &str, min: u32, height: u32, width: u32) -> Result<(), SpecError> {
    for (field, side) in [("input.height", height), ("input.width", width)] {
        if side < min {
            return Err(SpecError::new(field, format!("{architecture} needs at least {min} pixels")));
        }
    }
    Ok(())
}

/// Whether selector `sel` picks layer `name`: `all`, or `name` equals `sel` or starts with
/// `sel.` or `sel_` (so `backbone.block3` picks `backbone.block3.conv` and
/// `backbone.block3_sepconv1` but not `backbone.block30.conv`).
pub fn selector_matches(sel: &str, name: &str) -> bool {
    sel == "all"
        || name == sel
        || (name.starts_with(sel) && matches!(name.as_bytes().get(sel.len()), Some(b'.') | Some(b'_')))
}

/// The backbone's blocks, bottom to top, as selectors: what `unfreeze_top_blocks` counts.
/// small_cnn: `backbone.block{i}`; MobileNetV2: `backbone.expanded_conv` (Keras's block 0),
/// `backbone.block_1` ... `backbone.block_16`, then `backbone.Conv_1` (the stem `Conv1` is in
/// none); Xception: `backbone.block1` ... `backbone.block14`; EfficientNet-Lite0:
/// `backbone.block1a` ... `backbone.block7a` (16 blocks), then `backbone.top`.
pub fn blocks(model: &ModelSpec) -> Vec<String> {
    match model.backbone.architecture {
        Architecture::SmallCnn => {
            let n = model.backbone.widths.as_ref().map_or(small_cnn::DEFAULT_WIDTHS.len(), Vec::len);
            (1..=n).map(|i| format!("backbone.block{i}")).collect()
        }
        Architecture::MobilenetV2 => mobilenet_v2::blocks(),
        Architecture::Xception => (1..=14).map(|i| format!("backbone.block{i}")).collect(),
        Architecture::EfficientnetLite0 => efficientnet_lite0::blocks(),
    }
}

/// A phase's effective selectors: its `trainable` plus the top `unfreeze_top_blocks` blocks.
pub fn phase_selectors(model: &ModelSpec, phase: &PhaseSpec) -> Vec<String> {
    let mut selectors = phase.trainable.clone();
    if let Some(n) = phase.unfreeze_top_blocks {
        let blocks = blocks(model);
        selectors.extend(blocks.iter().rev().take(n).cloned());
    }
    selectors
}

/// The layers of `model` for `input` with Keras numerics, backbone then head. Errors name the
/// spec field.
pub fn plan(model: &ModelSpec, input: &InputSpec) -> Result<Vec<Layer>, SpecError> {
    plan_with(model, input, Convention::Keras)
}

/// The layers of `model` for `input` with the numerics of `convention`.
pub fn plan_with(model: &ModelSpec, input: &InputSpec, convention: Convention) -> Result<Vec<Layer>, SpecError> {
    let backbone = &model.backbone;
    if backbone.alpha.is_some() && backbone.architecture != Architecture::MobilenetV2 {
        return Err(SpecError::new("model.backbone.alpha", "only mobilenet_v2 has a width multiplier"));
    }
    if backbone.widths.is_some() && backbone.architecture != Architecture::SmallCnn {
        return Err(SpecError::new("model.backbone.widths", "only small_cnn takes widths"));
    }
    let (h, w) = (input.height, input.width);
    let mut layers = match backbone.architecture {
        Architecture::SmallCnn => small_cnn::layers(backbone.widths.as_deref(), h, w)?,
        Architecture::MobilenetV2 => mobilenet_v2::layers(backbone.alpha, h, w, convention)?,
        Architecture::Xception => xception::layers(h, w, convention)?,
        Architecture::EfficientnetLite0 => efficientnet_lite0::layers(h, w, convention)?,
    };
    let channels = *layers.last().map(|l| l.output_shape.last().unwrap_or(&0)).unwrap_or(&0);
    let head = &model.head;
    if !(0.0..1.0).contains(&head.dropout) {
        return Err(SpecError::new("model.head.dropout", "must be in [0, 1)"));
    }
    if head.units == 0 {
        return Err(SpecError::new("model.head.units", "must be at least 1"));
    }
    layers.push(Layer::new("head.pool", LayerKind::GlobalAvgPool, vec![channels]));
    layers.push(Layer::new("head.dropout", LayerKind::Dropout { rate: head.dropout }, vec![channels]));
    layers.push(Layer::new("head.dense", LayerKind::Dense { inputs: channels, units: head.units }, vec![head.units]));
    Ok(layers)
}

/// A model with its parameters.
#[derive(Debug)]
pub struct Model {
    pub layers: Vec<Layer>,
    pub params: ParamStore,
    pub device: Device,
    pub convention: Convention,
    /// This phase's batch-norm folds (empty unless [`Model::fold_frozen_batch_norms`] ran).
    pub folding: Folding,
}

impl Model {
    /// Builds the model with fresh Keras-style initialisation from `seed`. Backbone and head draw
    /// from separate streams, so loading backbone weights leaves the head's init unchanged.
    pub fn new(model: &ModelSpec, input: &InputSpec, seed: u64) -> Result<Self, TrainError> {
        Self::with_convention(model, input, seed, Convention::Keras)
    }

    /// As [`Model::new`], with the numerics of weights trained under `convention`.
    pub fn with_convention(
        model: &ModelSpec,
        input: &InputSpec,
        seed: u64,
        convention: Convention,
    ) -> Result<Self, TrainError> {
        let layers = plan_with(model, input, convention)?;
        let device = Device::Cpu;
        let mut params = ParamStore::new();
        let mut backbone_rng = rng::rng(seed, Stream::Init, 0, 0, 0);
        let mut head_rng = rng::rng(seed, Stream::Init, 1, 0, 0);
        for layer in &layers {
            let rng = if layer.name.starts_with("head.") { &mut head_rng } else { &mut backbone_rng };
            for w in layer.kind.weights() {
                let t = w.init.tensor(&w.shape, rng, &device)?;
                params.insert(&layer.name, w.name, w.role, t)?;
            }
        }
        Ok(Self { layers, params, device, convention, folding: Folding::default() })
    }

    /// Makes trainable exactly the weights of layers picked by `selectors`.
    pub fn set_trainable(&mut self, selectors: &[String]) {
        self.params.set_trainable(|layer| selectors.iter().any(|s| selector_matches(s, layer)));
    }

    /// `[batch, 3, h, w]` → logits `[batch, units]`.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        graph::run(&self.layers, &self.params, 0..self.layers.len(), x, ctx, &self.folding)
    }

    /// `[batch, 3, h, w]` → the backbone's feature map `[batch, c, h', w']` (head not run).
    pub fn features(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        let backbone = self.layers.iter().take_while(|l| l.name.starts_with("backbone.")).count();
        graph::run(&self.layers, &self.params, 0..backbone, x, ctx, &self.folding)
    }

    /// The output of the first `end` layers (see [`Model::cacheable_prefix`]).
    pub fn forward_prefix(&self, end: usize, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        graph::run(&self.layers, &self.params, 0..end, x, ctx, &self.folding)
    }

    /// Logits from the output of the first `start` layers, running the rest.
    pub fn forward_from(&self, start: usize, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        graph::run(&self.layers, &self.params, start..self.layers.len(), x, ctx, &self.folding)
    }

    /// Every conv → BN pair folded from the current weights, trainable or not (see
    /// [`graph::fold_inference`]), for [`Model::forward_inference`]. Valid until the weights
    /// change.
    pub fn inference_folding(&self) -> Result<Folding, TrainError> {
        graph::fold_inference(&self.layers, &self.params)
    }

    /// Logits from the output of the first `start` layers, in inference mode (batch norm on its
    /// moving statistics, no dropout, no graph), with the folds of
    /// [`Model::inference_folding`]: each batch norm runs inside its convolution's epilogue.
    pub fn forward_inference(&self, start: usize, x: &Tensor, folding: &Folding) -> Result<Tensor, TrainError> {
        self.forward_inference_on(Backend::Fast, start, x, folding)
    }

    /// [`Model::forward_inference`] on the ops of `backend` (benchmarks compare the two).
    pub fn forward_inference_on(
        &self,
        backend: Backend,
        start: usize,
        x: &Tensor,
        folding: &Folding,
    ) -> Result<Tensor, TrainError> {
        let mut ctx = ForwardCtx { backend, ..ForwardCtx::inference() };
        graph::run(&self.layers, &self.params, start..self.layers.len(), x, &mut ctx, folding)
    }

    /// How many leading layers compute a fixed function of the image in the current phase (no
    /// trainable weight, no dropout), when that covers the whole backbone: their output can be
    /// computed once per image (given batch norm in inference mode). `None` when some backbone
    /// layer trains or a later layer reads an output from inside the prefix.
    pub fn cacheable_prefix(&self) -> Option<usize> {
        let trains = |l: &Layer| self.params.iter().any(|p| p.layer == l.name && p.trainable());
        let end = self.layers.iter().position(|l| trains(l) || matches!(l.kind, LayerKind::Dropout { .. }))?;
        let backbone = self.layers.iter().take_while(|l| l.name.starts_with("backbone.")).count();
        let inside: HashSet<&str> = self.layers[..end].iter().map(|l| l.name.as_str()).collect();
        let reads_inside = self.layers[end..].iter().flat_map(|l| &l.inputs).any(|n| inside.contains(n.as_str()));
        (end >= backbone && !reads_inside).then_some(end)
    }

    /// Folds every frozen conv → BN pair (see [`graph::fold_frozen`]) from the current weights; returns how
    /// many. Only forward passes with batch norm in inference mode use the folds. Call at the
    /// start of a phase and [`Model::unfold`] at its end.
    pub fn fold_frozen_batch_norms(&mut self) -> Result<usize, TrainError> {
        self.folding = graph::fold_frozen(&self.layers, &self.params)?;
        Ok(self.folding.convs.len())
    }

    pub fn unfold(&mut self) {
        self.folding = Folding::default();
    }

    /// How the current trainable set runs, for `PhaseStarted.execution`: `backbone_forward` when
    /// the backbone is entirely frozen (no graph through it), `full_backward` when every weight
    /// trains, `partial_backward` otherwise (the frozen prefix still builds no graph).
    pub fn execution(&self) -> &'static str {
        let weights = || self.params.iter().filter(|p| p.role == Role::Weight);
        if weights().filter(|p| p.layer.starts_with("backbone.")).all(|p| !p.trainable()) {
            "backbone_forward"
        } else if weights().all(|p| p.trainable()) {
            "full_backward"
        } else {
            "partial_backward"
        }
    }
}
