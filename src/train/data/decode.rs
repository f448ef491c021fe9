//! Decoding: each image file is read once per job, converted to RGB8 and resized to the input
//! size with bilinear filtering, as Keras's `image_dataset_from_directory` does (no crop, aspect
//! ratio not preserved, no antialiasing, half-pixel centres). Pixels stay u8 in memory.
//!
//! Decoding allocations are capped so a decompression bomb fails that one file instead of the
//! process; a file that fails to decode is skipped and counted, not fatal.

use std::path::Path;

use image::{ImageReader, Limits, RgbImage};

use crate::train::job::Sample;

/// The most memory one image may take while decoding.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;
/// The largest side accepted.
const MAX_SIDE: u32 = 16_384;

/// A decoded, resized image: `height * width * 3` bytes, row-major RGB.
#[derive(Debug, Clone)]
pub struct Image {
    pub pixels: Vec<u8>,
    pub label: u32,
}

/// Decodes `samples` on all cores, keeping their order; returns the images that decoded and how
/// many did not.
pub fn decode_all(samples: &[Sample], height: u32, width: u32) -> (Vec<Image>, usize) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let chunk = samples.len().div_ceil(threads).max(1);
    let results: Vec<Vec<Option<Image>>> = std::thread::scope(|s| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|sample| {
                            let img = decode(&sample.path, height, width).ok()?;
                            Some(Image { pixels: img.into_raw(), label: sample.label as u32 })
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

/// One file to an RGB8 image of exactly `width` x `height`.
pub fn decode(path: &Path, height: u32, width: u32) -> Result<RgbImage, image::ImageError> {
    decode_reader(ImageReader::open(path)?.with_guessed_format()?, height, width)
}

/// An encoded image (JPEG or PNG bytes) to an RGB8 image of exactly `width` x `height`, with the
/// same limits and resize as [`decode`].
pub fn decode_bytes(bytes: &[u8], height: u32, width: u32) -> Result<RgbImage, image::ImageError> {
    decode_reader(ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?, height, width)
}

fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    mut reader: ImageReader<R>,
    height: u32,
    width: u32,
) -> Result<RgbImage, image::ImageError> {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let rgb = reader.decode()?.into_rgb8();
    Ok(resize_bilinear(&rgb, height, width))
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
