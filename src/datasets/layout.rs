//! The Keras `image_dataset_from_directory` layout: finding the root, the class folders and the
//! images in them, and listing a finished dataset for training.
//!
//! `build` turns an extracted tree into the normalised one (`<class>/<path>` holding only valid
//! images) and its manifest; `list_samples` reads a normalised tree back. Neither touches
//! archives.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::images;
use super::DatasetError;

/// How many skipped files the manifest names; the count covers all of them.
const MAX_SKIPPED_EXAMPLES: usize = 20;

/// What an import produced: the classes in label order and what was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Classes sorted by name (byte order); the position is the label.
    pub classes: Vec<ClassCount>,
    /// Files not imported: outside any class folder, not JPEG/PNG, corrupt, or too many pixels.
    pub skipped: usize,
    /// Up to 20 of the skipped files, with why.
    pub skipped_examples: Vec<SkippedFile>,
    /// Bytes of the images kept.
    pub total_bytes: u64,
}

/// One class folder and how many valid images it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub name: String,
    pub images: usize,
}

/// A file left out of the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Path inside the archive, `/`-separated.
    pub path: String,
    pub reason: String,
}

/// Normalises the tree extracted under `top`: picks the root, deletes every file that is not a
/// valid image inside a class folder, drops classes left empty. Returns the directory that now
/// holds exactly `<class>/<images>` (either `top` or its single wrapping folder) and the manifest.
pub(crate) fn build(
    top: &Path,
    max_pixels: u64,
) -> Result<(PathBuf, DatasetManifest), DatasetError> {
    let root = find_root(top)?;
    let mut skipped = Skipped::default();

    // Files beside the class folders (and beside a wrapping folder) belong to no class.
    let mut stray = files_in(top)?;
    if root != top {
        stray.extend(files_in(&root)?);
    }
    for file in stray {
        fs::remove_file(&file)?;
        skipped.push(top, &file, "not inside a class folder".to_owned());
    }

    let mut class_dirs = subdirs(&root)?;
    class_dirs.sort();
    let mut candidates = Vec::new(); // (class index, file)
    for (index, (_, dir)) in class_dirs.iter().enumerate() {
        let mut files = Vec::new();
        walk_files(dir, &mut files)?;
        files.sort();
        candidates.extend(files.into_iter().map(|f| (index, f)));
    }
    let paths: Vec<PathBuf> = candidates.iter().map(|(_, f)| f.clone()).collect();
    let verdicts = images::check_images(&paths, max_pixels)?;

    let mut counts = vec![0usize; class_dirs.len()];
    let mut total_bytes = 0u64;
    for ((index, file), verdict) in candidates.into_iter().zip(verdicts) {
        match verdict {
            None => {
                counts[index] += 1;
                total_bytes += fs::metadata(&file)?.len();
            }
            Some(reason) => {
                fs::remove_file(&file)?;
                skipped.push(top, &file, reason);
            }
        }
    }

    let mut classes = Vec::new();
    for ((name, dir), images) in class_dirs.into_iter().zip(counts) {
        if images == 0 {
            fs::remove_dir_all(&dir)?;
        } else {
            prune_empty_dirs(&dir)?;
            classes.push(ClassCount { name, images });
        }
    }
    if classes.is_empty() {
        return Err(DatasetError::NoClasses);
    }
    let manifest = DatasetManifest {
        classes,
        skipped: skipped.count,
        skipped_examples: skipped.examples,
        total_bytes,
    };
    Ok((root, manifest))
}

#[derive(Default)]
struct Skipped {
    count: usize,
    examples: Vec<SkippedFile>,
}

impl Skipped {
    fn push(&mut self, top: &Path, file: &Path, reason: String) {
        self.count += 1;
        if self.examples.len() < MAX_SKIPPED_EXAMPLES {
            let rel = file.strip_prefix(top).unwrap_or(file);
            let path = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            self.examples.push(SkippedFile { path, reason });
        }
    }
}

/// A single wrapping folder (`mydata/cats/…`, `mydata/dogs/…`) is descended into once: when the
/// top holds exactly one folder, no images beside it, and that folder has subfolders. The last
/// condition keeps a lone folder of images (`cats/*.jpg`) as a one-class dataset.
fn find_root(top: &Path) -> Result<PathBuf, DatasetError> {
    let dirs = subdirs(top)?;
    let [(_, only)] = dirs.as_slice() else {
        return Ok(top.to_path_buf());
    };
    for file in files_in(top)? {
        if images::sniff_image(&file)? {
            return Ok(top.to_path_buf());
        }
    }
    if subdirs(only)?.is_empty() {
        return Ok(top.to_path_buf());
    }
    Ok(only.clone())
}

/// Immediate subdirectories as (name, path). Names are UTF-8: extraction refused anything else.
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // file_type() does not follow symlinks, so a link is never taken for a folder.
        if entry.file_type()?.is_dir() {
            let name = entry.file_name().into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("folder name {name:?} is not UTF-8"),
                )
            })?;
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Immediate regular files, sorted.
fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Every regular file under `dir`, recursively, in no particular order.
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk_files(&entry.path(), out)?;
        } else if file_type.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Removes empty folders below `dir` (not `dir` itself), so skipped files leave no husks.
fn prune_empty_dirs(dir: &Path) -> io::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && prune_empty_dirs(&entry.path())? {
            fs::remove_dir(entry.path())?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

/// Lists an imported dataset: class names in label order, and every image with its label, sorted
/// by class then path, so every run sees the same order before any shuffling.
pub fn list_samples(
    dataset_dir: &Path,
) -> Result<(Vec<String>, Vec<(PathBuf, usize)>), DatasetError> {
    let mut class_dirs = subdirs(dataset_dir)?;
    class_dirs.retain(|(name, _)| !name.starts_with('.'));
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(DatasetError::NoClasses);
    }
    let mut samples = Vec::new();
    let mut names = Vec::with_capacity(class_dirs.len());
    for (label, (name, dir)) in class_dirs.into_iter().enumerate() {
        let mut files = Vec::new();
        walk_files(&dir, &mut files)?;
        files.sort();
        samples.extend(files.into_iter().map(|f| (f, label)));
        names.push(name);
    }
    Ok((names, samples))
}
