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

/// An image file and its label (the index of its class in the sorted class names).
pub type Sample = (PathBuf, usize);

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
/// `extracted_skips`: what extraction already left out (not images), reported first.
pub(crate) fn build(
    top: &Path,
    max_pixels: u64,
    extracted_skips: Vec<SkippedFile>,
) -> Result<(PathBuf, DatasetManifest), DatasetError> {
    let root = find_root(top)?;
    let mut skipped = Skipped::default();
    for file in extracted_skips {
        skipped.record(file);
    }

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
    let manifest = DatasetManifest { classes, skipped: skipped.count, skipped_examples: skipped.examples, total_bytes };
    Ok((root, manifest))
}

#[derive(Default)]
struct Skipped {
    count: usize,
    examples: Vec<SkippedFile>,
}

impl Skipped {
    fn push(&mut self, top: &Path, file: &Path, reason: String) {
        let rel = file.strip_prefix(top).unwrap_or(file);
        let path = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        self.record(SkippedFile { path, reason });
    }

    fn record(&mut self, file: SkippedFile) {
        self.count += 1;
        if self.examples.len() < MAX_SKIPPED_EXAMPLES {
            self.examples.push(file);
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
                io::Error::new(io::ErrorKind::InvalidData, format!("folder name {name:?} is not UTF-8"))
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
pub fn list_samples(dataset_dir: &Path) -> Result<(Vec<String>, Vec<Sample>), DatasetError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::archive::tests::{file, jpeg, png, write_tar, write_zip, Fixture, Item};
    use crate::datasets::ImportLimits;

    fn counts(manifest: &DatasetManifest) -> Vec<(&str, usize)> {
        manifest.classes.iter().map(|c| (c.name.as_str(), c.images)).collect()
    }

    #[test]
    fn wrapping_folder_is_descended_once() {
        let fx = Fixture::new();
        write_zip(
            &fx.upload(),
            &[
                file("mydata/cats/a.png", png()),
                file("mydata/dogs/b.jpg", jpeg()),
                file("mydata/dogs/c.jpg", jpeg()),
                file("README.txt", b"about".to_vec()),
            ],
        );
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(counts(&manifest), [("cats", 1), ("dogs", 2)]);
        assert_eq!(manifest.skipped, 1);
        assert_eq!(manifest.skipped_examples[0].path, "README.txt");
        assert!(fx.dest().join("cats/a.png").is_file());
        assert!(!fx.dest().join("mydata").exists());
        // The leftovers outside the wrapping folder went with the staging folder.
        assert_eq!(fs::read_dir(fx.dir.path().join("datasets")).unwrap().count(), 1);
    }

    #[test]
    fn single_folder_of_images_is_one_class() {
        let fx = Fixture::new();
        write_tar(&fx.upload(), &[file("cats/a.png", png()), file("cats/b.png", png())], false);
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(counts(&manifest), [("cats", 2)]);
    }

    #[test]
    fn bad_files_are_skipped_and_counted() {
        let fx = Fixture::new();
        let big = crate::datasets::images::tests::encoded(image::ImageFormat::Png, 50, 50);
        let truncated = png()[..40].to_vec();
        write_zip(
            &fx.upload(),
            &[
                file("loose.png", png()),
                file("cats/a.png", png()),
                file("cats/nested/deeper/b.jpg", jpeg()),
                file("cats/broken/c.jpg", b"\xff\xd8\xff not really".to_vec()),
                file("cats/labels.csv", b"a,b".to_vec()),
                file("dogs/big.png", big),
                file("dogs/d.png", truncated),
                file("dogs/e.jpg", jpeg()),
                file("empty/notes.txt", b"nothing".to_vec()),
            ],
        );
        let limits = ImportLimits { max_image_pixels: 2_000, ..ImportLimits::default() };
        let manifest = fx.import(&limits).unwrap();
        assert_eq!(counts(&manifest), [("cats", 2), ("dogs", 1)]);
        assert_eq!(manifest.skipped, 6);
        // Files that are not images are skipped as they are extracted, the rest afterwards.
        let reasons: std::collections::BTreeMap<_, _> =
            manifest.skipped_examples.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
        assert_eq!(
            reasons.keys().copied().collect::<Vec<_>>(),
            ["cats/broken/c.jpg", "cats/labels.csv", "dogs/big.png", "dogs/d.png", "empty/notes.txt", "loose.png"]
        );
        assert!(reasons["dogs/big.png"].contains("pixels"));
        assert_eq!(reasons["cats/labels.csv"], "not a JPEG or PNG image");
        assert_eq!(reasons["loose.png"], "not inside a class folder");
        // Only valid images remain; emptied folders and image-less classes are gone.
        assert!(fx.dest().join("cats/nested/deeper/b.jpg").is_file());
        assert!(!fx.dest().join("cats/broken").exists());
        assert!(!fx.dest().join("empty").exists());
        assert!(!fx.dest().join("loose.png").exists());
        let (classes, samples) = list_samples(&fx.dest()).unwrap();
        assert_eq!(classes, ["cats", "dogs"]);
        assert_eq!(samples.len(), 3);
    }

    #[test]
    fn skipped_examples_are_capped() {
        let fx = Fixture::new();
        let mut items: Vec<Item> = (0..30).map(|i| file(&format!("cats/{i:02}.txt"), vec![1])).collect();
        items.push(file("cats/ok.png", png()));
        write_tar(&fx.upload(), &items, true);
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(manifest.skipped, 30);
        assert_eq!(manifest.skipped_examples.len(), MAX_SKIPPED_EXAMPLES);
        assert_eq!(manifest.skipped_examples[0].path, "cats/00.txt");
    }

    #[test]
    fn no_class_folders() {
        let cases: [&[Item]; 3] = [
            &[file("a.png", png()), file("b.png", png())],
            &[file("cats/a.txt", b"x".to_vec()), file("dogs/b.jpg", b"nope".to_vec())],
            &[Item::Dir("cats/".into()), Item::Dir("dogs/".into())],
        ];
        for items in cases {
            let fx = Fixture::new();
            write_zip(&fx.upload(), items);
            let err = fx.import(&ImportLimits::default()).unwrap_err();
            assert!(matches!(err, DatasetError::NoClasses), "{err:?}");
            assert_eq!(err.code(), "no_class_folders");
            fx.assert_clean();
        }
    }

    #[test]
    fn list_samples_is_sorted_with_labels() {
        let fx = Fixture::new();
        // Written out of order on purpose; `B` sorts before `a` in byte order.
        write_tar(
            &fx.upload(),
            &[
                file("dogs/z.png", png()),
                file("a/2.png", png()),
                file("dogs/sub/a.png", png()),
                file("B/x.jpg", jpeg()),
                file("a/10.png", png()),
                file("dogs/b.png", png()),
            ],
            false,
        );
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        let names: Vec<_> = manifest.classes.iter().map(|c| c.name.clone()).collect();
        let (classes, samples) = list_samples(&fx.dest()).unwrap();
        assert_eq!(classes, ["B", "a", "dogs"]);
        assert_eq!(classes, names);
        let rel: Vec<_> = samples
            .iter()
            .map(|(p, l)| (p.strip_prefix(fx.dest()).unwrap().to_str().unwrap().to_owned(), *l))
            .collect();
        let want = [
            ("B/x.jpg", 0),
            ("a/10.png", 1),
            ("a/2.png", 1),
            ("dogs/b.png", 2),
            ("dogs/sub/a.png", 2),
            ("dogs/z.png", 2),
        ];
        assert_eq!(rel, want.map(|(p, l)| (p.to_owned(), l)));
        assert!(matches!(list_samples(fx.dir.path().join("datasets").as_path()), Ok((c, _)) if c == ["ds"]));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(list_samples(empty.path()), Err(DatasetError::NoClasses)));
    }

    #[test]
    fn real_jpegs_from_cats_and_dogs() {
        crate::test_support::require_shared_data!();
        let train = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cats_and_dogs_filtered/train");
        let mut items = Vec::new();
        for class in ["cats", "dogs"] {
            let mut files: Vec<_> = fs::read_dir(train.join(class))
                .expect("cats_and_dogs_filtered is in shared/data")
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for path in files.into_iter().take(4) {
                let name = format!("pets/{class}/{}", path.file_name().unwrap().to_str().unwrap());
                items.push(file(&name, fs::read(&path).unwrap()));
            }
        }
        let fx = Fixture::new();
        write_zip(&fx.upload(), &items);
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(counts(&manifest), [("cats", 4), ("dogs", 4)]);
        assert_eq!(manifest.skipped, 0);
        let (_, samples) = list_samples(&fx.dest()).unwrap();
        assert_eq!(samples.iter().filter(|(_, l)| *l == 1).count(), 4);
    }
}
