//! Dataset import: turns an uploaded archive into a folder of class subfolders holding only
//! images that decode, and lists such a folder for training.
//!
//! The expected layout is Keras's `image_dataset_from_directory`: top-level folders are class
//! names, each holding JPEG/PNG images (nested folders allowed); one wrapping folder is tolerated.
//! Everything here is synchronous and CPU/disk bound; async callers run it in `spawn_blocking`.
//! This module must not depend on HTTP, SQL or the async runtime.
//!
//! An import extracts into a staging folder beside the destination and renames it into place
//! only once everything is validated, so the destination either holds a complete dataset or does
//! not exist.

mod archive;
mod error;
mod images;
mod layout;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use error::DatasetError;
pub use layout::{list_samples, ClassCount, DatasetManifest, Sample, SkippedFile};

/// Bounds on what one upload may cost the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportLimits {
    /// Bytes written while extracting, counted as they are written (headers are not trusted).
    pub max_unpacked_bytes: u64,
    /// Archive entries of any kind, folders included.
    pub max_entries: u64,
    /// Bytes one entry may unpack to (declared in its header or actually written).
    pub max_entry_bytes: u64,
    /// Unpacked bytes per compressed byte allowed for a zip entry or a tar.gz stream, judged
    /// once past 1 MiB unpacked. JPEG and PNG hardly compress further (about 1:1).
    pub max_compression_ratio: u64,
    /// Width times height of any one image; larger ones are skipped.
    pub max_image_pixels: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_unpacked_bytes: 8 << 30,
            max_entries: 200_000,
            max_entry_bytes: 256 << 20,
            max_compression_ratio: 100,
            max_image_pixels: 40_000_000,
        }
    }
}

/// Imports the zip, tar or tar.gz at `archive` as a dataset at `dest`, which must not exist yet
/// (its parent is created if needed). The format is detected from the file's first bytes.
///
/// On success `dest` holds `<class>/<relative path>` with only valid images. On any error nothing
/// is left behind: the staging folder is removed and `dest` is not created.
pub fn import_archive(archive: &Path, dest: &Path, limits: &ImportLimits) -> Result<DatasetManifest, DatasetError> {
    let format = archive::detect_format(archive)?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("dataset destination {} already exists", dest.display()),
        )
        .into());
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    let staging = Staging::create(dest)?;
    let skipped = archive::extract(archive, format, &staging.path, limits)?;
    let (root, manifest) = layout::build(&staging.path, limits.max_image_pixels, skipped)?;
    // Staging sits beside dest, so this is a same-filesystem rename: atomic.
    fs::rename(&root, dest)?;
    drop(staging); // removes what was left outside a wrapping folder, if anything
    Ok(manifest)
}

/// A uniquely named folder beside the destination, removed when dropped unless renamed away.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(dest: &Path) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dataset destination {} has no file name", dest.display()),
            )
        })?;
        let mut staging_name = name.to_os_string();
        staging_name.push(format!(".staging-{}", uuid::Uuid::new_v4().simple()));
        let path = dest.with_file_name(staging_name);
        fs::create_dir(&path)?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // NotFound after a successful rename is expected; any other failure leaves a uniquely
        // named folder that cannot be mistaken for a dataset.
        let _ = fs::remove_dir_all(&self.path);
    }
}
