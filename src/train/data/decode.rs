//! Decoding: each image file is read once per job, converted to RGB8 and brought to the input
//! size with bilinear filtering (no antialiasing, half-pixel centres) in the spec's resize mode:
//! stretched as Keras's `image_dataset_from_directory` does by default, center-cropped as
//! torchvision's evaluation transform, or padded. Pixels stay u8 in memory.
//!
//! Decoding allocations are capped so a decompression bomb fails that one file instead of the
//! process; a file that fails to decode is skipped and counted, not fatal.

use std::path::Path;

use image::{ImageReader, Limits, RgbImage};

use crate::train::job::Sample;
use crate::train::spec::{InputSpec, ResizeMode};

/// The most memory one image may take while decoding.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;
/// The largest side accepted.
const MAX_SIDE: u32 = 16_384;

/// A decoded, resized image: `height * width * 3` bytes, row-major RGB.
#[derive(Debug, Clone)]
pub struct Image {
    pub pixels: Vec<u8>,
    pub label: u32,
    /// The file it came from.
    pub path: std::path::PathBuf,
}

/// Decodes `samples` on all cores, keeping their order; returns the images that decoded and how
/// many did not.
pub fn decode_all(samples: &[Sample], input: &InputSpec) -> (Vec<Image>, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let chunk = samples.len().div_ceil(threads).max(1);
    let results: Vec<Vec<Option<Image>>> = std::thread::scope(|s| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|sample| {
                            let img = decode(&sample.path, input).ok()?;
                            Some(Image {
                                pixels: img.into_raw(),
                                label: sample.label as u32,
                                path: sample.path.clone(),
                            })
                        })
                        .collect()
                })
            })
            .collect();
        // A panic inside a decoder counts as a failed chunk rather than taking the job down.
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut images = Vec::with_capacity(samples.len());
    let mut decoded = 0;
    for img in results.into_iter().flatten().flatten() {
        images.push(img);
        decoded += 1;
    }
    (images, samples.len() - decoded)
}

/// One file to an RGB8 image of exactly the input's size.
pub fn decode(path: &Path, input: &InputSpec) -> Result<RgbImage, image::ImageError> {
    decode_reader(ImageReader::open(path)?.with_guessed_format()?, input)
}

/// An encoded image (JPEG or PNG bytes) to an RGB8 image of exactly the input's size, with the
/// same limits and resize as [`decode`].
pub fn decode_bytes(bytes: &[u8], input: &InputSpec) -> Result<RgbImage, image::ImageError> {
    decode_reader(ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?, input)
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    mut reader: ImageReader<R>,
    input: &InputSpec,
) -> Result<RgbImage, image::ImageError> {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let rgb = reader.decode()?.into_rgb8();
    Ok(fit(&rgb, input.height, input.width, input.resize))
}

/// `src` brought to exactly `width` x `height` in `mode`. No intermediate image is larger than
/// the source or the output, whatever the source's shape (a 1 x 16384 image must not become a
/// 224 x 3.7M one on its way to a 224 x 224 crop).
pub fn fit(src: &RgbImage, height: u32, width: u32, mode: ResizeMode) -> RgbImage {
    let (sw, sh) = src.dimensions();
    match mode {
        ResizeMode::Stretch => resize_bilinear(src, height, width),
        ResizeMode::CenterCrop => {
            // The centred part of the source with the output's aspect ratio, then resized:
            // what resizing the shorter side and cropping the centre keeps.
            let scale = (height as f64 / sh as f64).max(width as f64 / sw as f64);
            let side = |out: u32, source: u32| ((out as f64 / scale).round() as u32).clamp(1, source);
            let (cw, ch) = (side(width, sw), side(height, sh));
            // Rounded as torchvision's `CenterCrop` places its crop.
            let (x, y) = (((sw - cw) as f64 / 2.0).round() as u32, ((sh - ch) as f64 / 2.0).round() as u32);
            resize_bilinear(&image::imageops::crop_imm(src, x, y, cw, ch).to_image(), height, width)
        }
        ResizeMode::Pad => {
            let scale = (height as f64 / sh as f64).min(width as f64 / sw as f64);
            let side = |s: u32, out: u32| ((s as f64 * scale).round() as u32).clamp(1, out);
            let inside = resize_bilinear(src, side(sh, height), side(sw, width));
            let (iw, ih) = inside.dimensions();
            let mut canvas = RgbImage::new(width, height);
            image::imageops::replace(&mut canvas, &inside, ((width - iw) / 2).into(), ((height - ih) / 2).into());
            canvas
        }
    }
}

/// Bilinear resize with half-pixel centres (TensorFlow 2's `tf.image.resize`, antialias off).
pub fn resize_bilinear(src: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    if (sw, sh) == (width, height) {
        return src.clone();
    }
    let axis = |dst: u32, src_len: u32| -> Vec<(usize, usize, f32)> {
        let scale = src_len as f32 / dst as f32;
        (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let lo = (s.floor() as usize).min(src_len as usize - 1);
                let hi = (lo + 1).min(src_len as usize - 1);
                (lo, hi, s - lo as f32)
            })
            .collect()
    };
    let xs = axis(width, sw);
    let ys = axis(height, sh);
    let raw = src.as_raw();
    let stride = sw as usize * 3;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for c in 0..3 {
                let p = |y: usize, x: usize| raw[y * stride + x * 3 + c] as f32;
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                out.push((top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer has width * height * 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 x 100: red, green and blue thirds, left to right.
    fn thirds() -> RgbImage {
        RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        })
    }

    #[test]
    fn stretch_keeps_everything_and_loses_the_aspect_ratio() {
        let out = fit(&thirds(), 30, 30, ResizeMode::Stretch);
        assert_eq!(out.dimensions(), (30, 30));
        assert_eq!(out.get_pixel(2, 15).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(15, 15).0, [0, 255, 0]);
        assert_eq!(out.get_pixel(27, 15).0, [0, 0, 255]);
    }

    #[test]
    fn center_crop_keeps_the_middle_at_its_aspect_ratio() {
        // The middle 100 x 100 of the source, the green third, resized to 50 x 50.
        let out = fit(&thirds(), 50, 50, ResizeMode::CenterCrop);
        assert_eq!(out.dimensions(), (50, 50));
        for (x, y) in [(1, 1), (25, 25), (48, 48)] {
            assert_eq!(out.get_pixel(x, y).0, [0, 255, 0], "({x}, {y})");
        }
        // A source already at the input's aspect ratio is only resized.
        let square = RgbImage::from_pixel(80, 80, image::Rgb([9, 9, 9]));
        assert_eq!(fit(&square, 40, 40, ResizeMode::CenterCrop).get_pixel(0, 39).0, [9, 9, 9]);
    }

    #[test]
    fn an_extreme_aspect_ratio_stays_small_on_its_way() {
        // 1 x 16384 (a few hundred bytes as a PNG): cropped to 1 x 1 before it is resized.
        let strip = RgbImage::from_pixel(1, 16_384, image::Rgb([5, 6, 7]));
        for mode in [ResizeMode::CenterCrop, ResizeMode::Pad, ResizeMode::Stretch] {
            let out = fit(&strip, 224, 224, mode);
            assert_eq!(out.dimensions(), (224, 224), "{mode:?}");
        }
        assert_eq!(fit(&strip, 224, 224, ResizeMode::CenterCrop).get_pixel(100, 100).0, [5, 6, 7]);
    }

    #[test]
    fn pad_keeps_everything_at_its_aspect_ratio_on_black() {
        // Scaled to 60 x 20, centred on a 60 x 60 black square.
        let out = fit(&thirds(), 60, 60, ResizeMode::Pad);
        assert_eq!(out.dimensions(), (60, 60));
        assert_eq!(out.get_pixel(30, 5).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(30, 55).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(5, 30).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(30, 30).0, [0, 255, 0]);
        assert_eq!(out.get_pixel(55, 30).0, [0, 0, 255]);
    }

    /// Training decodes files and predict decodes request bodies: the same pixels in every mode.
    #[test]
    fn a_real_photo_decodes_the_same_from_its_file_and_from_its_bytes() {
        crate::test_support::require_shared_data!();
        let path = crate::test_support::shared_dir().join("data/cats_and_dogs_filtered/validation/cats/cat.2000.jpg");
        let bytes = std::fs::read(&path).unwrap();
        for resize in [ResizeMode::Stretch, ResizeMode::CenterCrop, ResizeMode::Pad] {
            let input = InputSpec { height: 64, width: 48, resize, ..InputSpec::default() };
            let from_file = decode(&path, &input).unwrap();
            assert_eq!(from_file.dimensions(), (48, 64));
            assert_eq!(from_file, decode_bytes(&bytes, &input).unwrap(), "{resize:?}");
        }
    }
}
