//! Image checks: is this file a JPEG or PNG that actually decodes within the pixel limit?
//!
//! Decoding is the only honest test: extensions lie, and datasets in the wild carry truncated
//! and mislabelled files (TFDS's cats_vs_dogs drops 1738 of them). A bad file is reported as a
//! reason string so the caller can skip it; only local I/O failures are errors. The checks run
//! on a few threads because decoding dominates import time.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use image::{ImageFormat, ImageReader, Limits};

/// Decoding is CPU-bound and memory-hungry (up to `max_image_pixels * 8` bytes per thread), so a
/// few threads are enough; the service is also training on the same machine.
const MAX_THREADS: usize = 4;

/// Why a file that is not a JPEG or PNG is skipped (by the image check, or at extraction).
pub(crate) const NOT_AN_IMAGE: &str = "not a JPEG or PNG image";

/// `None` for a valid image, or why the file is skipped.
pub(crate) type Verdict = Option<String>;

/// Whether the file starts with JPEG or PNG magic bytes. Cheap; used to decide whether a file
/// looks like an image before anything is decoded, never as the final verdict.
pub(crate) fn sniff_image(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; 8];
    let filled = read_full(&mut File::open(path)?, &mut head)?;
    Ok(looks_like_image(&head[..filled]))
}

/// Reads until `buf` is full or the source ends; returns how much was read.
pub(crate) fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether these first bytes of a file are JPEG or PNG magic.
pub(crate) fn looks_like_image(head: &[u8]) -> bool {
    head.starts_with(&[0xFF, 0xD8, 0xFF]) || head.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Checks one file. `Ok(None)` means a valid image, `Ok(Some(reason))` a file to skip; `Err` is
/// only for failing to open or read a file we wrote ourselves.
pub(crate) fn check_image(path: &Path, max_pixels: u64) -> io::Result<Verdict> {
    let reader = open(path)?;
    let reader_format = match reader.format() {
        Some(format @ (ImageFormat::Jpeg | ImageFormat::Png)) => format,
        _ => return Ok(Some(NOT_AN_IMAGE.to_owned())),
    };
    // Read the header first so an oversized image is refused before anything is allocated for it.
    let (width, height) = match reader.into_dimensions() {
        Ok(dims) => dims,
        Err(e) => return Ok(Some(format!("corrupt image: {e}"))),
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Ok(Some("corrupt image: zero width or height".to_owned()));
    }
    if pixels > max_pixels {
        return Ok(Some(format!("image is {width}x{height}, more than {max_pixels} pixels")));
    }

    if reader_format == ImageFormat::Jpeg && !jpeg_has_end_marker(path)? {
        return Ok(Some("truncated JPEG: no end-of-image marker".to_owned()));
    }

    let mut reader = open(path)?;
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    // 8 bytes a pixel covers 16-bit RGBA output; the slack covers decoder working buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    // A decoder panic on hostile bytes must cost one skipped file, not the import.
    match panic::catch_unwind(AssertUnwindSafe(|| reader.decode())) {
        Ok(Ok(_)) => Ok(None),
        Ok(Err(e)) => Ok(Some(format!("corrupt image: {e}"))),
        Err(_) => Ok(Some("corrupt image: decoder failed".to_owned())),
    }
}

/// Whether the JPEG's first scan is followed by an end-of-image marker (`FF D9`).
///
/// The JPEG decoder quietly fills in missing scan data, so a cut-off file decodes as a partly
/// grey image; training on those is what the skip is for. The header segments are walked by
/// their lengths (an EXIF thumbnail there carries its own `FF D9`); after the first start-of-scan
/// the entropy-coded data stuffs every `FF` as `FF 00`, so `FF D9` can only be a marker there.
fn jpeg_has_end_marker(path: &Path) -> io::Result<bool> {
    let mut reader = BufReader::new(File::open(path)?);
    match find_end_marker(&mut reader) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        other => other,
    }
}

fn find_end_marker(reader: &mut impl io::BufRead) -> io::Result<bool> {
    let mut byte = || -> io::Result<u8> {
        let mut b = [0u8; 1];
        reader.read_exact(&mut b)?;
        Ok(b[0])
    };
    if (byte()?, byte()?) != (0xFF, 0xD8) {
        return Ok(false);
    }
    loop {
        if byte()? != 0xFF {
            return Ok(false);
        }
        let mut marker = byte()?;
        while marker == 0xFF {
            marker = byte()?; // fill bytes
        }
        match marker {
            0xD9 => return Ok(false),       // end before any scan: no image data
            0x01 | 0xD0..=0xD7 => continue, // markers without a length
            _ => {}
        }
        let len = u16::from_be_bytes([byte()?, byte()?]);
        let Some(skip) = len.checked_sub(2) else {
            return Ok(false);
        };
        for _ in 0..skip {
            byte()?;
        }
        if marker == 0xDA {
            break;
        }
    }
    let mut after_ff = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(false);
        }
        for &b in chunk {
            if after_ff && b == 0xD9 {
                return Ok(true);
            }
            after_ff = b == 0xFF;
        }
        let n = chunk.len();
        reader.consume(n);
    }
}

fn open(path: &Path) -> io::Result<ImageReader<BufReader<File>>> {
    ImageReader::new(BufReader::new(File::open(path)?)).with_guessed_format()
}

/// Checks every file on a few threads; the result at index `i` is for `paths[i]`.
pub(crate) fn check_images(paths: &[PathBuf], max_pixels: u64) -> io::Result<Vec<Verdict>> {
    let threads =
        thread::available_parallelism().map_or(1, NonZeroUsize::get).clamp(1, MAX_THREADS).min(paths.len().max(1));
    // Work is handed out one file at a time rather than in fixed chunks: image sizes vary a lot,
    // and fixed chunks would leave a thread idle while another decodes all the big ones.
    let next = AtomicUsize::new(0);
    let per_thread: Vec<io::Result<Vec<(usize, Verdict)>>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else { break };
                        done.push((i, check_image(path, max_pixels)?));
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("image check thread panicked"))))
            .collect()
    });
    let mut results = vec![None; paths.len()];
    for done in per_thread {
        for (i, verdict) in done? {
            results[i] = verdict;
        }
    }
    Ok(results)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb};
    use std::io::Cursor;

    /// A small image encoded in memory, for tests here and in the other modules.
    pub(crate) fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let img = ImageBuffer::from_fn(width, height, |x, y| Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 3) as u8]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encode test image");
        out.into_inner()
    }

    #[test]
    fn valid_invalid_and_oversized_images() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let png = encoded(ImageFormat::Png, 16, 12);
        let jpeg = encoded(ImageFormat::Jpeg, 16, 12);
        let big_jpeg = encoded(ImageFormat::Jpeg, 200, 150);
        let paths = vec![
            write("a.png", &png),
            write("b.jpg", &jpeg),
            write("c.jpg", b"definitely not a jpeg"),
            write("d.png", &png[..png.len() / 2]),
            write("e.png", &encoded(ImageFormat::Png, 100, 100)),
            write("f.jpg", &png), // wrong extension, still a PNG: accepted
            write("g.jpg", &jpeg[..jpeg.len() / 2]),
        ];
        let results = check_images(&paths, 100 * 99).unwrap();
        assert_eq!(results[0], None);
        assert_eq!(results[1], None);
        assert_eq!(results[2].as_deref(), Some("not a JPEG or PNG image"));
        assert!(results[3].as_deref().unwrap().starts_with("corrupt image"));
        assert!(results[4].as_deref().unwrap().contains("more than 9900 pixels"));
        assert_eq!(results[5], None);
        assert!(results[6].as_deref().unwrap().starts_with("corrupt image"));
        // The JPEG decoder fills in a cut-off scan instead of failing; the end marker check must
        // catch it, wherever the cut is.
        for cut in [10, 2, 1] {
            let p = write("h.jpg", &big_jpeg[..big_jpeg.len() - cut]);
            assert_eq!(
                check_image(&p, u64::MAX).unwrap().as_deref(),
                Some("truncated JPEG: no end-of-image marker"),
                "cut {cut}"
            );
        }
        // Bytes after the end marker (some cameras append data) are fine.
        let mut trailing = big_jpeg.clone();
        trailing.extend_from_slice(&[0; 100]);
        assert_eq!(check_image(&write("i.jpg", &trailing), u64::MAX).unwrap(), None);
        assert!(sniff_image(&paths[0]).unwrap());
        assert!(!sniff_image(&paths[2]).unwrap());
    }
}
