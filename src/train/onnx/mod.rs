//! ONNX export: the whole network of a checkpoint in inference mode (batch norm on its moving
//! statistics as `BatchNormalization`, dropout gone), from the already preprocessed image to the
//! class probabilities, with the preprocessing and the class names in its metadata.
//!
//! One float input `input` of shape `[N, 3, H, W]`, one output `probabilities` of shape
//! `[N, classes]` (a one-unit sigmoid head gives two columns, `1 - p` and `p`, as predict does).
//! Opset 13, which every current runtime accepts.

mod proto;

use std::collections::HashMap;
use std::path::Path;

use proto::{float_tensor, int64_tensor, node, value_info, Attr, Dim, Message};
use serde_json::json;

use crate::train::checkpoint::load_weights;
use crate::train::error::TrainError;
use crate::train::fit::{loss_kind, LossKind};
use crate::train::model::Model;
use crate::train::nn::{Layer, LayerKind, Pad, ParamStore};
use crate::train::spec::{InputSpec, ModelSpec};
use crate::train::weights;

pub const OPSET: i64 = 13;
/// IR version 7 is the first that opset 13 may use.
const IR_VERSION: i64 = 7;
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "probabilities";

/// The ONNX model (serialized `ModelProto`) of `model`/`input` with the checkpoint at `weights`.
/// `checkpoint_id` is written into the metadata (`tanuki.checkpoint_id`).
pub fn export_onnx(
    model: &ModelSpec,
    input: &InputSpec,
    classes: &[String],
    weights: &Path,
    checkpoint_id: &str,
) -> Result<Vec<u8>, TrainError> {
    let kind = loss_kind(model.head.units, classes.len())?;
    let convention = weights::file_convention(weights)?;
    let m = Model::with_convention(model, input, 0, convention)?;
    m.params.load(&load_weights(weights)?, |_| true)?;

    let mut graph = GraphBuilder::default();
    let logits = graph.layers(&m.layers, &m.params)?;
    match kind {
        LossKind::Binary => {
            // predict's two columns: P(classes[0]) = 1 - sigmoid(logit), P(classes[1]) = sigmoid(logit).
            graph.node("head.sigmoid", "Sigmoid", &[&logits], vec![]);
            graph.initializer(float_tensor("head.one", &[], &[1.0]));
            graph.node("head.complement", "Sub", &["head.one", "head.sigmoid"], vec![]);
            graph.node_to(
                OUTPUT,
                "head.probabilities",
                "Concat",
                &["head.complement", "head.sigmoid"],
                vec![("axis", Attr::Int(1))],
            );
        }
        LossKind::Softmax => {
            graph.node_to(OUTPUT, "head.softmax", "Softmax", &[&logits], vec![("axis", Attr::Int(1))]);
        }
    }

    let mut g = Message::default();
    for n in &graph.nodes {
        g.message(1, n);
    }
    g.string(2, "tanuki");
    for t in &graph.initializers {
        g.message(5, t);
    }
    let (h, w) = (input.height as usize, input.width as usize);
    g.message(11, &value_info(INPUT, &[Dim::Named("N"), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)]));
    g.message(12, &value_info(OUTPUT, &[Dim::Named("N"), Dim::Fixed(classes.len())]));

    let mut opset = Message::default();
    opset.string(1, "").int(2, OPSET);
    let mut model_proto = Message::default();
    model_proto
        .int(1, IR_VERSION)
        .string(2, "tanuki")
        .string(3, env!("CARGO_PKG_VERSION"))
        .string(
            6,
            "Input: RGB pixels (0..255) resized and scaled as tanuki.preprocessing says, NCHW float32. \
             Output: class probabilities in the order of tanuki.classes.",
        )
        .message(7, &g)
        .message(8, &opset);
    let metadata = [
        ("tanuki.classes", serde_json::to_string(classes).unwrap_or_default()),
        ("tanuki.preprocessing", preprocessing(model, input).to_string()),
        ("tanuki.architecture", model.backbone.architecture.name().to_owned()),
        ("tanuki.checkpoint_id", checkpoint_id.to_owned()),
    ];
    for (key, value) in metadata {
        model_proto.message(14, &proto::entry(key, &value));
    }
    Ok(model_proto.into_bytes())
}

/// What an image goes through before the network, as `tanuki.preprocessing` states it.
fn preprocessing(model: &ModelSpec, input: &InputSpec) -> serde_json::Value {
    let mut p = json!({
        "height": input.height,
        "width": input.width,
        "resize": input.resize,
        // `data::decode::resize_bilinear`, the same as `tf.image.resize` (and OpenCV's
        // `INTER_LINEAR`); PIL's and torchvision's bilinear antialias when shrinking, which
        // changes a prediction by up to tens of percent.
        "interpolation": "bilinear",
        "half_pixel_centers": true,
        "antialias": false,
        "rounded_to_uint8": true,
        "pad_fill": [0, 0, 0],
        "color": "RGB",
        "layout": "NCHW",
    });
    match (input.mean, input.std) {
        (Some(mean), Some(std)) => {
            p["formula"] = json!("(pixel / 255 - mean) / std");
            p["mean"] = json!(mean);
            p["std"] = json!(std);
        }
        _ => {
            let (scale, offset) = input.affine(model.backbone.architecture);
            p["formula"] = json!("pixel * scale + offset");
            p["scale"] = json!(scale);
            p["offset"] = json!(offset);
        }
    }
    p
}

#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
    /// A layer's name → the ONNX value holding its output (a dropout's is its input's).
    outputs: HashMap<String, String>,
}

impl GraphBuilder {
    fn initializer(&mut self, t: Message) {
        self.initializers.push(t);
    }

    /// A node whose output is named as the node.
    fn node(&mut self, name: &str, op: &str, inputs: &[&str], attributes: Vec<(&str, Attr)>) {
        self.node_to(name, name, op, inputs, attributes);
    }

    fn node_to(&mut self, output: &str, name: &str, op: &str, inputs: &[&str], attributes: Vec<(&str, Attr)>) {
        self.nodes.push(node(name, op, inputs, &[output], &attributes));
    }

    /// A weight of `layer` as an initializer named `<layer>.<weight>`.
    fn weight(&mut self, params: &ParamStore, layer: &str, weight: &str) -> Result<String, TrainError> {
        let t = params.tensor(layer, weight, false)?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let name = format!("{layer}.{weight}");
        self.initializer(float_tensor(&name, t.dims(), &values));
        Ok(name)
    }

    /// Every layer in order; returns the value holding the last one's output (the logits).
    fn layers(&mut self, layers: &[Layer], params: &ParamStore) -> Result<String, TrainError> {
        let mut previous = INPUT.to_owned();
        for layer in layers {
            let input_of = |i: usize, outputs: &HashMap<String, String>| -> Result<String, TrainError> {
                match layer.inputs.get(i) {
                    None if i == 0 => Ok(previous.clone()),
                    None => Err(TrainError::Graph(format!("{}: needs input {i}", layer.name))),
                    Some(n) => outputs
                        .get(n)
                        .cloned()
                        .ok_or_else(|| TrainError::Graph(format!("{}: no output named {n}", layer.name))),
                }
            };
            let x = input_of(0, &self.outputs)?;
            let name = layer.name.as_str();
            let out = match layer.kind {
                LayerKind::Conv2d { kernel, stride, padding, bias, .. } => {
                    self.conv(params, name, name, &x, ("kernel", bias), kernel, stride, padding, 1)?
                }
                LayerKind::DepthwiseConv2d { channels, kernel, stride, padding, bias } => {
                    self.conv(params, name, name, &x, ("depthwise_kernel", bias), kernel, stride, padding, channels)?
                }
                LayerKind::SeparableConv2d { in_channels, kernel, padding, bias, .. } => {
                    let depthwise = format!("{name}/depthwise");
                    let y = self.conv(
                        params,
                        name,
                        &depthwise,
                        &x,
                        ("depthwise_kernel", false),
                        kernel,
                        1,
                        padding,
                        in_channels,
                    )?;
                    self.conv(params, name, name, &y, ("pointwise_kernel", bias), 1, 1, Pad::default(), 1)?
                }
                LayerKind::ZeroPad(p) => {
                    let pads = format!("{name}.pads");
                    let (t, b, l, r) = (p.top as i64, p.bottom as i64, p.left as i64, p.right as i64);
                    self.initializer(int64_tensor(&pads, &[8], &[0, 0, t, l, 0, 0, b, r]));
                    self.node(name, "Pad", &[&x, &pads], vec![]);
                    name.to_owned()
                }
                LayerKind::BatchNorm { epsilon, .. } => {
                    let [gamma, beta, mean, var] =
                        ["gamma", "beta", "moving_mean", "moving_variance"].map(|w| self.weight(params, name, w));
                    let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
                    self.node(
                        name,
                        "BatchNormalization",
                        &[&x, &gamma, &beta, &mean, &var],
                        vec![("epsilon", Attr::Float(epsilon as f32))],
                    );
                    name.to_owned()
                }
                LayerKind::Relu => {
                    self.node(name, "Relu", &[&x], vec![]);
                    name.to_owned()
                }
                LayerKind::Relu6 => {
                    let (min, max) = (format!("{name}.min"), format!("{name}.max"));
                    self.initializer(float_tensor(&min, &[], &[0.0]));
                    self.initializer(float_tensor(&max, &[], &[6.0]));
                    self.node(name, "Clip", &[&x, &min, &max], vec![]);
                    name.to_owned()
                }
                LayerKind::MaxPool { size } => {
                    let s = size as i64;
                    self.node(
                        name,
                        "MaxPool",
                        &[&x],
                        vec![("kernel_shape", Attr::Ints(vec![s, s])), ("strides", Attr::Ints(vec![s, s]))],
                    );
                    name.to_owned()
                }
                LayerKind::MaxPoolPadded { size, stride, padding } => {
                    let (k, s) = (size as i64, stride as i64);
                    self.node(
                        name,
                        "MaxPool",
                        &[&x],
                        vec![
                            ("kernel_shape", Attr::Ints(vec![k, k])),
                            ("strides", Attr::Ints(vec![s, s])),
                            ("pads", Attr::Ints(onnx_pads(padding))),
                        ],
                    );
                    name.to_owned()
                }
                LayerKind::Add => {
                    let y = input_of(1, &self.outputs)?;
                    self.node(name, "Add", &[&x, &y], vec![]);
                    name.to_owned()
                }
                LayerKind::GlobalAvgPool => {
                    let pooled = format!("{name}/pooled");
                    self.node(&pooled, "GlobalAveragePool", &[&x], vec![]);
                    self.node(name, "Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
                    name.to_owned()
                }
                // The identity in inference.
                LayerKind::Dropout { .. } => x,
                LayerKind::Dense { .. } => {
                    let (k, b) = (self.weight(params, name, "kernel")?, self.weight(params, name, "bias")?);
                    self.node(name, "Gemm", &[&x, &k, &b], vec![]);
                    name.to_owned()
                }
            };
            self.outputs.insert(layer.name.clone(), out.clone());
            previous = out;
        }
        Ok(previous)
    }

    /// A `Conv` node named `node_name` with the kernel (and bias) of `layer`.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        params: &ParamStore,
        layer: &str,
        node_name: &str,
        x: &str,
        (kernel_name, bias): (&str, bool),
        kernel: usize,
        stride: usize,
        padding: Pad,
        group: usize,
    ) -> Result<String, TrainError> {
        let w = self.weight(params, layer, kernel_name)?;
        let b = if bias { self.weight(params, layer, "bias")? } else { String::new() };
        let (k, s) = (kernel as i64, stride as i64);
        let mut inputs = vec![x, w.as_str()];
        if bias {
            inputs.push(&b);
        }
        self.node(
            node_name,
            "Conv",
            &inputs,
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("pads", Attr::Ints(onnx_pads(padding))),
                ("group", Attr::Int(group as i64)),
            ],
        );
        Ok(node_name.to_owned())
    }
}

/// ONNX's order: the begins of each spatial axis, then the ends.
fn onnx_pads(p: Pad) -> Vec<i64> {
    vec![p.top as i64, p.left as i64, p.bottom as i64, p.right as i64]
}
