//! Per-image augmentation and normalisation, from u8 HWC pixels into one image's slot of an NCHW
//! f32 batch.
//!
//! Augmentation follows Keras's layers: `RandomFlip("horizontal")` (p = 0.5) and
//! `RandomRotation(factor)` (angle uniform in [-factor, factor] * 2π about the centre, bilinear,
//! `fill_mode="reflect"`). Normalisation is `pixel * scale + offset` or, with mean/std,
//! `(pixel / 255 - mean) / std` per RGB channel.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::train::spec::{Architecture, AugmentationSpec, InputSpec};

/// Per-channel affine map from a pixel value (0..255) to the network input.
#[derive(Debug, Clone, Copy)]
pub struct Normalize {
    mul: [f32; 3],
    add: [f32; 3],
}

impl Normalize {
    /// The map `input` gives a backbone of `architecture` (whose weights' convention fills in
    /// an absent scale/offset).
    pub fn new(input: &InputSpec, architecture: Architecture) -> Self {
        match (input.mean, input.std) {
            (Some(mean), Some(std)) => Self {
                mul: std::array::from_fn(|c| 1.0 / (255.0 * std[c])),
                add: std::array::from_fn(|c| -mean[c] / std[c]),
            },
            _ => {
                let (scale, offset) = input.affine(architecture);
                Self { mul: [scale; 3], add: [offset; 3] }
            }
        }
    }
}

/// Writes one image into `out` (`3 * h * w` floats, channel-major). With `aug` and `rng`, draws
/// a flip and a rotation first; the draws happen in a fixed order so a seed fixes the result.
pub fn write_image(
    pixels: &[u8],
    h: usize,
    w: usize,
    aug: Option<(&AugmentationSpec, &mut ChaCha8Rng)>,
    norm: Normalize,
    out: &mut [f32],
) {
    let plane = h * w;
    let (flip, angle) = match aug {
        Some((spec, rng)) => {
            let flip = spec.horizontal_flip && rng.gen::<f32>() < 0.5;
            let angle = if spec.rotation > 0.0 {
                rng.gen_range(-1.0f32..=1.0) * spec.rotation * std::f32::consts::TAU
            } else {
                0.0
            };
            (flip, angle)
        }
        None => (false, 0.0),
    };
    let src_x = |x: usize| if flip { w - 1 - x } else { x };
    if angle == 0.0 {
        for y in 0..h {
            for x in 0..w {
                let p = (y * w + src_x(x)) * 3;
                for c in 0..3 {
                    out[c * plane + y * w + x] = pixels[p + c] as f32 * norm.mul[c] + norm.add[c];
                }
            }
        }
        return;
    }
    // Inverse mapping: for each output pixel, the rotated source position (about the centre).
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let at = |y: usize, x: usize, c: usize| {
        let xx = src_x(x);
        pixels[(y * w + xx) * 3 + c] as f32
    };
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (y as f32 - cy, x as f32 - cx);
            let sx = reflect(cos * dx + sin * dy + cx, w);
            let sy = reflect(-sin * dx + cos * dy + cy, h);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for c in 0..3 {
                let top = at(y0, x0, c) + (at(y0, x1, c) - at(y0, x0, c)) * fx;
                let bottom = at(y1, x0, c) + (at(y1, x1, c) - at(y1, x0, c)) * fx;
                let v = top + (bottom - top) * fy;
                out[c * plane + y * w + x] = v * norm.mul[c] + norm.add[c];
            }
        }
    }
}

/// Keras/TF `fill_mode="reflect"` (`d c b a | a b c d | d c b a`): folds a coordinate back into
/// `[0, len - 1]`, reflecting about the outer edge of the border pixel.
fn reflect(mut v: f32, len: usize) -> f32 {
    let len_f = len as f32;
    if len <= 1 {
        return 0.0;
    }
    let period = 2.0 * len_f;
    if v < 0.0 {
        if v < -period {
            v += period * (-v / period).trunc();
        }
        v = if v < -len_f { v + period } else { -v - 1.0 };
    } else if v > len_f - 1.0 {
        v -= period * (v / period).trunc();
        if v >= len_f {
            v = period - v - 1.0;
        }
    }
    v.clamp(0.0, len_f - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_folds_back_inside() {
        assert_eq!(reflect(-1.0, 4), 0.0);
        assert_eq!(reflect(-2.0, 4), 1.0);
        assert_eq!(reflect(4.0, 4), 3.0);
        assert_eq!(reflect(5.0, 4), 2.0);
        assert_eq!(reflect(1.5, 4), 1.5);
    }

    #[test]
    fn rotation_with_reflect_fill_keeps_a_uniform_image_uniform() {
        use rand::SeedableRng;
        let (h, w) = (6, 5);
        let pixels = vec![100u8; h * w * 3];
        let input = InputSpec { mean: Some([0.5; 3]), std: Some([0.25; 3]), ..InputSpec::default() };
        let spec = AugmentationSpec { horizontal_flip: true, rotation: 0.5 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = vec![0f32; 3 * h * w];
        write_image(&pixels, h, w, Some((&spec, &mut rng)), Normalize::new(&input, Architecture::SmallCnn), &mut out);
        let expected = (100.0 / 255.0 - 0.5) / 0.25;
        assert!(out.iter().all(|v| (v - expected).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn pixels_land_channel_major() {
        let pixels: Vec<u8> = (0..2 * 3).map(|i| i as u8 * 10).collect(); // 1 x 2, RGB
        let input = InputSpec { scale: Some(1.0), offset: Some(0.0), ..InputSpec::default() };
        let mut out = vec![0f32; 6];
        write_image(&pixels, 1, 2, None, Normalize::new(&input, Architecture::SmallCnn), &mut out);
        assert_eq!(out, [0.0, 30.0, 10.0, 40.0, 20.0, 50.0]);
    }
}
