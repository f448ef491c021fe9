//! Thumbnails of the images a model got most wrong: the final weights' worst-classified
//! validation and test images, as the model saw them (resized, not augmented), written beside
//! the job's checkpoints as `examples/<set>-<rank>.png`.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::train::data::Dataset;
use crate::train::error::TrainError;
use crate::train::evaluation::Evaluation;

/// The file of the `rank`-th worst image (0-based, as listed in `Evaluation::worst`) of `set`
/// (`validation` or `test`).
pub fn path(checkpoint_dir: &Path, set: &str, rank: usize) -> PathBuf {
    checkpoint_dir.join("examples").join(format!("{set}-{rank}.png"))
}

/// Writes one PNG per listed image of `evaluation`, each under a temporary name first.
pub fn write(checkpoint_dir: &Path, set: &str, ds: &Dataset, evaluation: &Evaluation) -> Result<(), TrainError> {
    std::fs::create_dir_all(checkpoint_dir.join("examples"))?;
    for (rank, example) in evaluation.worst.iter().enumerate() {
        let Some(image) = ds.images.get(example.position) else { continue };
        let rgb = RgbImage::from_raw(ds.width as u32, ds.height as u32, image.pixels.clone())
            .ok_or_else(|| TrainError::Data(format!("image {} has the wrong size", example.file)))?;
        let dest = path(checkpoint_dir, set, rank);
        let tmp = dest.with_extension("png.tmp");
        rgb.save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| TrainError::Data(format!("thumbnail {}: {e}", dest.display())))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(())
}
