//! MobileNetV2 as `keras.applications.MobileNetV2(include_top=False)` builds it: the same layers,
//! the same names (prefixed `backbone.`), the same channel rounding for `alpha`.
//!
//! Names: stem `Conv1`, `bn_Conv1`, `Conv1_relu`; block 0 `expanded_conv_{depthwise,project}`
//! (+ `_BN`, `_relu`); blocks 1–16 `block_{n}_{expand,depthwise,project}` (+ `_BN`, `_relu`),
//! `block_{n}_pad` (Keras's `ZeroPadding2D` before a stride-2 depthwise conv) and
//! `block_{n}_add` (the residual, when stride 1 and the width is unchanged); top `Conv_1`,
//! `Conv_1_bn`, `out_relu`. Under the torchvision convention the pads are symmetric and batch
//! norm's epsilon is 1e-5; shapes and counts do not change.

use crate::train::model::{check_min_side, Convention};
use crate::train::nn::Pad;
use crate::train::nn::{Layer, LayerKind};
use crate::train::spec::SpecError;

/// The smallest input side Keras accepts.
pub const MIN_SIDE: u32 = 32;
/// Width multipliers accepted: Keras takes any positive alpha without weights; past this the
/// model is far bigger than anything pretrained.
pub const MAX_ALPHA: f32 = 2.0;

/// `(expansion, output filters, stride)` of blocks 0..=16.
const BLOCKS: [(usize, usize, usize); 17] = [
    (1, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
    (6, 32, 1),
    (6, 64, 2),
    (6, 64, 1),
    (6, 64, 1),
    (6, 64, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 160, 2),
    (6, 160, 1),
    (6, 160, 1),
    (6, 320, 1),
];

/// Keras's `_make_divisible`: round to the nearest multiple of `divisor`, never below it and
/// never more than 10% down.
pub fn make_divisible(v: f32, divisor: usize) -> usize {
    let d = divisor as f32;
    let mut new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f32) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

/// Block selectors bottom to top (see [`crate::train::model::blocks`]).
pub fn blocks() -> Vec<String> {
    let mut out = vec!["backbone.expanded_conv".to_string()];
    out.extend((1..BLOCKS.len()).map(|n| format!("backbone.block_{n}")));
    out.push("backbone.Conv_1".into());
    out
}

/// The backbone's layers for an RGB `height` x `width` input.
pub fn layers(alpha: Option<f32>, height: u32, width: u32, convention: Convention) -> Result<Vec<Layer>, SpecError> {
    let alpha = alpha.unwrap_or(1.0);
    if !(alpha.is_finite() && alpha > 0.0 && alpha <= MAX_ALPHA) {
        return Err(SpecError::new("model.backbone.alpha", format!("must be in (0, {MAX_ALPHA}]")));
    }
    check_min_side("mobilenet_v2", MIN_SIDE, height, width)?;
    let eps = convention.bn_epsilon();
    let same = convention.same_padding();
    let (mut h, mut w) = (height as usize, width as usize);
    let mut out = Vec::new();
    let push = |out: &mut Vec<Layer>, name: String, kind: LayerKind, shape: Vec<usize>| {
        out.push(Layer::new(format!("backbone.{name}"), kind, shape));
    };

    let mut c = make_divisible(32.0 * alpha, 8);
    let pad = Pad::same(3, 2, h, w, same);
    (h, w) = pad.out_hw(h, w, 3, 2);
    let conv1 = LayerKind::Conv2d { in_channels: 3, out_channels: c, kernel: 3, stride: 2, padding: pad, bias: false };
    push(&mut out, "Conv1".into(), conv1, vec![h, w, c]);
    push(&mut out, "bn_Conv1".into(), LayerKind::BatchNorm { channels: c, epsilon: eps }, vec![h, w, c]);
    push(&mut out, "Conv1_relu".into(), LayerKind::Relu6, vec![h, w, c]);

    for (id, &(expansion, filters, stride)) in BLOCKS.iter().enumerate() {
        let block_input = out.last().map(|l| l.name.clone()).unwrap_or_default();
        let out_c = make_divisible((filters as f32 * alpha).trunc(), 8);
        let prefix = if id == 0 { "expanded_conv".to_string() } else { format!("block_{id}") };
        let in_c = c;
        if id > 0 {
            c *= expansion;
            let expand = LayerKind::Conv2d {
                in_channels: in_c,
                out_channels: c,
                kernel: 1,
                stride: 1,
                padding: Pad::default(),
                bias: false,
            };
            push(&mut out, format!("{prefix}_expand"), expand, vec![h, w, c]);
            push(
                &mut out,
                format!("{prefix}_expand_BN"),
                LayerKind::BatchNorm { channels: c, epsilon: eps },
                vec![h, w, c],
            );
            push(&mut out, format!("{prefix}_expand_relu"), LayerKind::Relu6, vec![h, w, c]);
        }
        let padding = if stride == 2 {
            let pad = Pad::same(3, 2, h, w, same);
            (h, w) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
            push(&mut out, format!("{prefix}_pad"), LayerKind::ZeroPad(pad), vec![h, w, c]);
            Pad::default()
        } else {
            Pad::uniform(1)
        };
        (h, w) = padding.out_hw(h, w, 3, stride);
        let dw = LayerKind::DepthwiseConv2d { channels: c, kernel: 3, stride, padding, bias: false };
        push(&mut out, format!("{prefix}_depthwise"), dw, vec![h, w, c]);
        push(
            &mut out,
            format!("{prefix}_depthwise_BN"),
            LayerKind::BatchNorm { channels: c, epsilon: eps },
            vec![h, w, c],
        );
        push(&mut out, format!("{prefix}_depthwise_relu"), LayerKind::Relu6, vec![h, w, c]);
        let project = LayerKind::Conv2d {
            in_channels: c,
            out_channels: out_c,
            kernel: 1,
            stride: 1,
            padding: Pad::default(),
            bias: false,
        };
        c = out_c;
        push(&mut out, format!("{prefix}_project"), project, vec![h, w, c]);
        push(
            &mut out,
            format!("{prefix}_project_BN"),
            LayerKind::BatchNorm { channels: c, epsilon: eps },
            vec![h, w, c],
        );
        if in_c == out_c && stride == 1 {
            let bn = format!("backbone.{prefix}_project_BN");
            let add = Layer::new(format!("backbone.{prefix}_add"), LayerKind::Add, vec![h, w, c]);
            out.push(add.with_inputs(&[&block_input, &bn]));
        }
    }

    let last = if alpha > 1.0 { make_divisible(1280.0 * alpha, 8) } else { 1280 };
    let top = LayerKind::Conv2d {
        in_channels: c,
        out_channels: last,
        kernel: 1,
        stride: 1,
        padding: Pad::default(),
        bias: false,
    };
    push(&mut out, "Conv_1".into(), top, vec![h, w, last]);
    push(&mut out, "Conv_1_bn".into(), LayerKind::BatchNorm { channels: last, epsilon: eps }, vec![h, w, last]);
    push(&mut out, "out_relu".into(), LayerKind::Relu6, vec![h, w, last]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(alpha: f32) -> (usize, usize) {
        let layers = layers(Some(alpha), 224, 224, Convention::Keras).unwrap();
        let weights = layers.iter().flat_map(|l| l.kind.weights());
        let (mut total, mut stats) = (0, 0);
        for w in weights {
            let n: usize = w.shape.iter().product();
            total += n;
            if w.role == crate::train::nn::Role::Stat {
                stats += n;
            }
        }
        (total, stats)
    }

    #[test]
    fn counts_match_the_keras_files() {
        // The README of ../shared/weights: 2,257,984 values, 34,112 of them moving statistics.
        assert_eq!(count(1.0), (2_257_984, 34_112));
        assert_eq!(count(0.35).0, 410_208);
    }

    #[test]
    fn shapes_at_160_and_odd_sizes() {
        let out = |h, w| layers(None, h, w, Convention::Keras).unwrap().last().unwrap().output_shape.clone();
        assert_eq!(out(160, 160), vec![5, 5, 1280]);
        assert_eq!(out(224, 224), vec![7, 7, 1280]);
        assert_eq!(out(33, 75), vec![2, 3, 1280]);
        assert_eq!(out(32, 32), vec![1, 1, 1280]);
        assert!(layers(None, 31, 64, Convention::Keras).is_err());
    }

    #[test]
    fn make_divisible_as_keras() {
        assert_eq!(make_divisible(32.0 * 0.35, 8), 16);
        assert_eq!(make_divisible((16.0f32 * 0.35).trunc(), 8), 8);
        assert_eq!(make_divisible((320.0f32 * 0.35).trunc(), 8), 112);
        assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
    }
}
