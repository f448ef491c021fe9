//! Models: an architecture-dispatched backbone plus the classification head, as an ordered list
//! of named layers over a [`ParamStore`].
//!
//! The layer list is pure data computed from the spec ([`plan`]), so validation and the summary
//! need no tensors; [`Model::new`] then creates and initialises the parameters. Names are
//! hierarchical (`backbone.block1.conv`, `head.dense`) and a phase's `trainable` selectors match
//! them by prefix at `.` boundaries.

pub mod small_cnn;

use candle_core::{Device, Tensor};

use super::job::TrainError;
use super::layers::{ForwardCtx, Layer, LayerKind};
use super::params::ParamStore;
use super::rng::{self, Stream};
use super::spec::{Architecture, InputSpec, ModelSpec, SpecError};

/// Whether selector `sel` picks layer `name`: `all`, or `name` equals `sel` or starts with
/// `sel.` (so `backbone.block3` picks `backbone.block3.conv` but not `backbone.block30.conv`).
pub fn selector_matches(sel: &str, name: &str) -> bool {
    sel == "all" || name == sel || (name.starts_with(sel) && name.as_bytes().get(sel.len()) == Some(&b'.'))
}

/// The layers of `model` for `input`, backbone then head. Errors name the spec field.
pub fn plan(model: &ModelSpec, input: &InputSpec) -> Result<Vec<Layer>, SpecError> {
    let mut layers = match model.backbone.architecture {
        Architecture::SmallCnn => small_cnn::layers(model.backbone.widths.as_deref(), input.height, input.width)?,
    };
    let channels = *layers.last().map(|l| l.output_shape.last().unwrap_or(&0)).unwrap_or(&0);
    let head = &model.head;
    if !(0.0..1.0).contains(&head.dropout) {
        return Err(SpecError::new("model.head.dropout", "must be in [0, 1)"));
    }
    if head.units == 0 {
        return Err(SpecError::new("model.head.units", "must be at least 1"));
    }
    layers.push(Layer { name: "head.pool".into(), kind: LayerKind::GlobalAvgPool, output_shape: vec![channels] });
    layers.push(Layer {
        name: "head.dropout".into(),
        kind: LayerKind::Dropout { rate: head.dropout },
        output_shape: vec![channels],
    });
    layers.push(Layer {
        name: "head.dense".into(),
        kind: LayerKind::Dense { inputs: channels, units: head.units },
        output_shape: vec![head.units],
    });
    Ok(layers)
}

/// A model with its parameters.
#[derive(Debug)]
pub struct Model {
    pub layers: Vec<Layer>,
    pub params: ParamStore,
    pub device: Device,
}

impl Model {
    /// Builds the model with fresh Keras-style initialisation from `seed`. Backbone and head draw
    /// from separate streams, so loading backbone weights leaves the head's init unchanged.
    pub fn new(model: &ModelSpec, input: &InputSpec, seed: u64) -> Result<Self, TrainError> {
        let layers = plan(model, input)?;
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
        Ok(Self { layers, params, device })
    }

    /// Makes trainable exactly the weights of layers picked by `selectors`.
    pub fn set_trainable(&mut self, selectors: &[String]) {
        self.params.set_trainable(|layer| selectors.iter().any(|s| selector_matches(s, layer)));
    }

    /// `[batch, 3, h, w]` → logits `[batch, units]`.
    pub fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor, TrainError> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, &self.params, ctx)?;
        }
        Ok(x)
    }

    /// How the current trainable set runs, for `PhaseStarted.execution`: `backbone_forward` when
    /// the backbone is entirely frozen (no graph through it), `full_backward` when every weight
    /// trains, `partial_backward` otherwise (the frozen prefix still builds no graph).
    pub fn execution(&self) -> &'static str {
        let weights = || self.params.iter().filter(|p| p.role == super::params::Role::Weight);
        if weights().filter(|p| p.layer.starts_with("backbone.")).all(|p| !p.trainable()) {
            "backbone_forward"
        } else if weights().all(|p| p.trainable()) {
            "full_backward"
        } else {
            "partial_backward"
        }
    }
}
