//! Xception as `keras.applications.Xception(include_top=False)` builds it (the guide's base):
//! the same layers and parameter counts, Keras's layer names prefixed `backbone.`.
//!
//! Keras leaves the four residual 1x1 convolutions and their batch norms unnamed (`conv2d`,
//! `batch_normalization`, `conv2d_1`, ... in a fresh session); here they are
//! `block{n}_shortcut` and `block{n}_shortcut_bn` for n in 2, 3, 4, 13, so that they belong to
//! their block, and the residual sums are `block{n}_add`. Keras's ReLUs are `Activation` layers;
//! they show as `ReLU` here.

use crate::train::model::{check_min_side, Convention};
use crate::train::nn::Pad;
use crate::train::nn::{Layer, LayerKind};
use crate::train::spec::SpecError;

/// The smallest input side Keras accepts.
pub const MIN_SIDE: u32 = 71;

/// Keras's auto-generated name of a shortcut layer (`block2_shortcut` → `conv2d`,
/// `block13_shortcut_bn` → `batch_normalization_3`), for Keras-format files.
pub fn keras_shortcut_name(layer: &str) -> Option<String> {
    let (block, bn) = match layer.strip_suffix("_shortcut_bn") {
        Some(b) => (b, true),
        None => (layer.strip_suffix("_shortcut")?, false),
    };
    let index = ["block2", "block3", "block4", "block13"].iter().position(|b| *b == block)?;
    let base = if bn { "batch_normalization" } else { "conv2d" };
    Some(if index == 0 { base.to_string() } else { format!("{base}_{index}") })
}

/// Builds the list with running shape bookkeeping.
struct Builder {
    out: Vec<Layer>,
    h: usize,
    w: usize,
    c: usize,
    eps: f64,
}

impl Builder {
    fn push(&mut self, name: &str, kind: LayerKind) {
        self.out.push(Layer::new(format!("backbone.{name}"), kind, vec![self.h, self.w, self.c]));
    }

    fn last(&self) -> String {
        self.out.last().map(|l| l.name.clone()).unwrap_or_default()
    }

    fn bn(&mut self, name: &str) {
        self.push(name, LayerKind::BatchNorm { channels: self.c, epsilon: self.eps });
    }

    fn relu(&mut self, name: &str) {
        self.push(name, LayerKind::Relu);
    }

    /// SeparableConv2D 3x3, "same", no bias, then its batch norm `{name}_bn`.
    fn sepconv_bn(&mut self, name: &str, filters: usize) {
        let kind = LayerKind::SeparableConv2d {
            in_channels: self.c,
            out_channels: filters,
            kernel: 3,
            padding: Pad::uniform(1),
            bias: false,
        };
        self.c = filters;
        self.push(name, kind);
        self.bn(&format!("{name}_bn"));
    }

    /// A downsampling block: [relu] sepconv-bn, relu, sepconv-bn, 3x3/2 max pool, plus the
    /// 1x1/2 conv-bn shortcut from the block's input.
    fn down_block(&mut self, n: usize, f1: usize, f2: usize, first_relu: bool, same: crate::train::nn::SamePadding) {
        let input = self.last();
        let (in_h, in_w, in_c) = (self.h, self.w, self.c);
        if first_relu {
            self.relu(&format!("block{n}_sepconv1_act"));
        }
        self.sepconv_bn(&format!("block{n}_sepconv1"), f1);
        self.relu(&format!("block{n}_sepconv2_act"));
        self.sepconv_bn(&format!("block{n}_sepconv2"), f2);
        let pad = Pad::same(3, 2, self.h, self.w, same);
        (self.h, self.w) = pad.out_hw(self.h, self.w, 3, 2);
        self.push(&format!("block{n}_pool"), LayerKind::MaxPoolPadded { size: 3, stride: 2, padding: pad });
        let pooled = self.last();

        let (out_h, out_w) = (self.h, self.w);
        (self.h, self.w, self.c) = (out_h, out_w, f2);
        let shortcut = LayerKind::Conv2d {
            in_channels: in_c,
            out_channels: f2,
            kernel: 1,
            stride: 2,
            padding: Pad::same(1, 2, in_h, in_w, same),
            bias: false,
        };
        self.out.push(
            Layer::new(format!("backbone.block{n}_shortcut"), shortcut, vec![out_h, out_w, f2]).with_inputs(&[&input]),
        );
        self.bn(&format!("block{n}_shortcut_bn"));
        let shortcut_bn = self.last();
        self.out.push(
            Layer::new(format!("backbone.block{n}_add"), LayerKind::Add, vec![out_h, out_w, f2])
                .with_inputs(&[&pooled, &shortcut_bn]),
        );
    }
}

/// The backbone's layers for an RGB `height` x `width` input.
pub fn layers(height: u32, width: u32, convention: Convention) -> Result<Vec<Layer>, SpecError> {
    check_min_side("xception", MIN_SIDE, height, width)?;
    let same = convention.same_padding();
    let mut b = Builder { out: Vec::new(), h: height as usize, w: width as usize, c: 3, eps: convention.bn_epsilon() };

    // Block 1: two "valid" 3x3 convs, the first at stride 2.
    for (i, (filters, stride)) in [(32, 2), (64, 1)].into_iter().enumerate() {
        let name = format!("block1_conv{}", i + 1);
        let kind = LayerKind::Conv2d {
            in_channels: b.c,
            out_channels: filters,
            kernel: 3,
            stride,
            padding: Pad::default(),
            bias: false,
        };
        (b.h, b.w) = Pad::default().out_hw(b.h, b.w, 3, stride);
        b.c = filters;
        b.push(&name, kind);
        b.bn(&format!("{name}_bn"));
        b.relu(&format!("{name}_act"));
    }
    b.down_block(2, 128, 128, false, same);
    b.down_block(3, 256, 256, true, same);
    b.down_block(4, 728, 728, true, same);
    // Blocks 5–12: three relu-sepconv-bn with an identity residual.
    for n in 5..=12 {
        let input = b.last();
        for k in 1..=3 {
            b.relu(&format!("block{n}_sepconv{k}_act"));
            b.sepconv_bn(&format!("block{n}_sepconv{k}"), 728);
        }
        let bn = b.last();
        b.out.push(
            Layer::new(format!("backbone.block{n}_add"), LayerKind::Add, vec![b.h, b.w, b.c])
                .with_inputs(&[&bn, &input]),
        );
    }
    b.down_block(13, 728, 1024, true, same);
    // Block 14: sepconv-bn-relu twice, no residual.
    for (k, filters) in [(1, 1536), (2, 2048)] {
        b.sepconv_bn(&format!("block14_sepconv{k}"), filters);
        b.relu(&format!("block14_sepconv{k}_act"));
    }
    Ok(b.out)
}
