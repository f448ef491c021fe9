//! EfficientNet-Lite0: EfficientNet-B0's seven stages of inverted-residual blocks without
//! squeeze-and-excitation, ReLU6 instead of SiLU, and a stem and head fixed at 32 and 1280
//! channels (TensorFlow's `efficientnet_lite_builder`, width and depth multipliers 1.0).
//!
//! Names follow Keras's `EfficientNetB0` (prefixed `backbone.`): stem `stem_conv`, `stem_bn`,
//! `stem_activation`; 16 blocks `block{stage}{letter}` (`block1a`, `block2a`, `block2b`, ...,
//! `block7a`) with layers `_expand_conv`, `_expand_bn`, `_expand_activation` (absent in block 1a,
//! whose expansion is 1), `_dwconv`, `_bn`, `_activation`, `_project_conv`, `_project_bn` and
//! `_add` (the residual, where stride is 1 and the width unchanged); top `top_conv`, `top_bn`,
//! `top_activation`. Unlike Keras, the "same" padding of a stride-2 convolution is part of the
//! convolution, not a `ZeroPadding2D` layer before it. Training adds no stochastic depth.

use crate::train::model::{check_min_side, Convention};
use crate::train::nn::Pad;
use crate::train::nn::{Layer, LayerKind};
use crate::train::spec::SpecError;

/// The smallest input side: five stride-2 stages take 32 pixels to one.
pub const MIN_SIDE: u32 = 32;

/// `(expansion, kernel, stride, output filters, repeats)` of the seven stages; a stage's stride
/// applies to its first block.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
];

const STEM: usize = 32;
const TOP: usize = 1280;

/// Block names bottom to top, without `backbone.`: `block1a` ... `block7a`.
fn block_names() -> Vec<String> {
    let mut out = Vec::new();
    for (stage, &(.., repeats)) in STAGES.iter().enumerate() {
        out.extend((0..repeats).map(|r| format!("block{}{}", stage + 1, (b'a' + r as u8) as char)));
    }
    out
}

/// Block selectors bottom to top (see [`crate::train::model::blocks`]): the 16 blocks, then
/// `backbone.top` (the stem is in none).
pub fn blocks() -> Vec<String> {
    let mut out: Vec<String> = block_names().into_iter().map(|b| format!("backbone.{b}")).collect();
    out.push("backbone.top".into());
    out
}

/// The index in the file's `_blocks.N` of one of our block names (`block2b` → 2).
pub fn block_index(name: &str) -> Option<usize> {
    block_names().iter().position(|b| b == name)
}

/// The backbone's layers for an RGB `height` x `width` input.
pub fn layers(height: u32, width: u32, convention: Convention) -> Result<Vec<Layer>, SpecError> {
    check_min_side("efficientnet_lite0", MIN_SIDE, height, width)?;
    let eps = convention.bn_epsilon();
    let same = convention.same_padding();
    let (mut h, mut w) = (height as usize, width as usize);
    let mut out = Vec::new();
    let push = |out: &mut Vec<Layer>, name: String, kind: LayerKind, shape: Vec<usize>| {
        out.push(Layer::new(format!("backbone.{name}"), kind, shape));
    };
    let conv1x1 = |in_channels, out_channels| LayerKind::Conv2d {
        in_channels,
        out_channels,
        kernel: 1,
        stride: 1,
        padding: Pad::default(),
        bias: false,
    };
    let bn = |channels| LayerKind::BatchNorm { channels, epsilon: eps };

    let padding = Pad::same(3, 2, h, w, same);
    (h, w) = padding.out_hw(h, w, 3, 2);
    let stem = LayerKind::Conv2d { in_channels: 3, out_channels: STEM, kernel: 3, stride: 2, padding, bias: false };
    push(&mut out, "stem_conv".into(), stem, vec![h, w, STEM]);
    push(&mut out, "stem_bn".into(), bn(STEM), vec![h, w, STEM]);
    push(&mut out, "stem_activation".into(), LayerKind::Relu6, vec![h, w, STEM]);

    let mut c = STEM;
    let mut names = block_names().into_iter();
    for &(expansion, kernel, first_stride, filters, repeats) in &STAGES {
        for r in 0..repeats {
            let p = names.next().unwrap_or_default();
            let stride = if r == 0 { first_stride } else { 1 };
            let block_input = out.last().map(|l| l.name.clone()).unwrap_or_default();
            let in_c = c;
            let wide = in_c * expansion;
            if expansion != 1 {
                push(&mut out, format!("{p}_expand_conv"), conv1x1(in_c, wide), vec![h, w, wide]);
                push(&mut out, format!("{p}_expand_bn"), bn(wide), vec![h, w, wide]);
                push(&mut out, format!("{p}_expand_activation"), LayerKind::Relu6, vec![h, w, wide]);
            }
            let padding = Pad::same(kernel, stride, h, w, same);
            (h, w) = padding.out_hw(h, w, kernel, stride);
            let dw = LayerKind::DepthwiseConv2d { channels: wide, kernel, stride, padding, bias: false };
            push(&mut out, format!("{p}_dwconv"), dw, vec![h, w, wide]);
            push(&mut out, format!("{p}_bn"), bn(wide), vec![h, w, wide]);
            push(&mut out, format!("{p}_activation"), LayerKind::Relu6, vec![h, w, wide]);
            c = filters;
            push(&mut out, format!("{p}_project_conv"), conv1x1(wide, c), vec![h, w, c]);
            push(&mut out, format!("{p}_project_bn"), bn(c), vec![h, w, c]);
            if stride == 1 && in_c == c {
                let project = format!("backbone.{p}_project_bn");
                let add = Layer::new(format!("backbone.{p}_add"), LayerKind::Add, vec![h, w, c]);
                out.push(add.with_inputs(&[&block_input, &project]));
            }
        }
    }

    push(&mut out, "top_conv".into(), conv1x1(c, TOP), vec![h, w, TOP]);
    push(&mut out, "top_bn".into(), bn(TOP), vec![h, w, TOP]);
    push(&mut out, "top_activation".into(), LayerKind::Relu6, vec![h, w, TOP]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::nn::Role;

    #[test]
    fn counts_match_the_pretrained_file() {
        // ../shared/weights/README.md: 3,413,024 values without the classifier, 42,016 of them
        // batch-norm moving statistics.
        let layers = layers(224, 224, Convention::Keras).unwrap();
        let (mut total, mut stats) = (0, 0);
        for w in layers.iter().flat_map(|l| l.kind.weights()) {
            let n: usize = w.shape.iter().product();
            total += n;
            if w.role == Role::Stat {
                stats += n;
            }
        }
        assert_eq!((total, stats), (3_413_024, 42_016));
        let adds = layers.iter().filter(|l| l.name.ends_with("_add")).count();
        assert_eq!(adds, 9, "one residual per block after the first of stages 2-6");
    }

    #[test]
    fn blocks_and_shapes() {
        let names = blocks();
        assert_eq!(names.len(), 17);
        assert_eq!(
            (names[0].as_str(), names[15].as_str(), names[16].as_str()),
            ("backbone.block1a", "backbone.block7a", "backbone.top")
        );
        assert_eq!(block_index("block6d"), Some(14));
        assert_eq!(block_index("block6e"), None);
        let out = |h, w| layers(h, w, Convention::Keras).unwrap().last().unwrap().output_shape.clone();
        assert_eq!(out(224, 224), vec![7, 7, 1280]);
        assert_eq!(out(160, 160), vec![5, 5, 1280]);
        assert_eq!(out(33, 75), vec![2, 3, 1280]);
        assert_eq!(out(32, 32), vec![1, 1, 1280]);
        assert!(layers(31, 64, Convention::Keras).is_err());
    }

    #[test]
    fn stride_two_pads_as_tensorflow() {
        // At an even side TensorFlow's SAME pads a 5x5 stride-2 window by 1 before and 2 after.
        let layers = layers(160, 160, Convention::Keras).unwrap();
        let dw = layers.iter().find(|l| l.name == "backbone.block3a_dwconv").unwrap();
        let LayerKind::DepthwiseConv2d { kernel, stride, padding, .. } = dw.kind else { panic!("{:?}", dw.kind) };
        assert_eq!((kernel, stride), (5, 2));
        assert_eq!((padding.top, padding.bottom, padding.left, padding.right), (1, 2, 1, 2));
        assert_eq!(dw.output_shape, vec![20, 20, 144]);
    }
}
