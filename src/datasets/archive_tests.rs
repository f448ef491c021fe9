//! Tests of archive extraction: formats, safety, limits, hostile input.
use super::*;
use crate::datasets::images::tests::encoded;
use crate::datasets::{import_archive, DatasetManifest};
use image::ImageFormat;

/// An entry for the test archive writers. Names are written verbatim, unsanitised.
pub(crate) enum Item {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    HardLink(String, String),
}

pub(crate) fn file(name: &str, bytes: Vec<u8>) -> Item {
    Item::File(name.to_owned(), bytes)
}

pub(crate) fn png() -> Vec<u8> {
    encoded(ImageFormat::Png, 8, 8)
}

pub(crate) fn jpeg() -> Vec<u8> {
    encoded(ImageFormat::Jpeg, 8, 8)
}

/// PNG magic followed by zeros: passes the sniff at extraction, compresses to almost nothing.
fn png_then_zeros(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    bytes[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    bytes
}

pub(crate) fn write_zip(path: &Path, items: &[Item]) {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for item in items {
        match item {
            Item::File(name, bytes) => {
                zip.start_file(name.as_str(), options).unwrap();
                zip.write_all(bytes).unwrap();
            }
            Item::Dir(name) => zip.add_directory(name.as_str(), options).unwrap(),
            Item::Symlink(name, target) => zip.add_symlink(name.as_str(), target.as_str(), options).unwrap(),
            Item::HardLink(..) => unreachable!("zip has no hard links"),
        }
    }
    zip.finish().unwrap();
}

pub(crate) fn write_tar(path: &Path, items: &[Item], gzip: bool) {
    let out = File::create(path).unwrap();
    let out: Box<dyn Write> =
        if gzip { Box::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast())) } else { Box::new(out) };
    let mut tar = tar::Builder::new(out);
    for item in items {
        // Headers are filled by hand: the builder's path setters refuse `..` and absolute
        // names, which are exactly what these tests need to write.
        let (name, kind, data, link): (&str, _, &[u8], _) = match item {
            Item::File(name, bytes) => (name, tar::EntryType::Regular, bytes, None),
            Item::Dir(name) => (name, tar::EntryType::Directory, &[], None),
            Item::Symlink(name, target) => (name, tar::EntryType::Symlink, &[], Some(target)),
            Item::HardLink(name, target) => (name, tar::EntryType::Link, &[], Some(target)),
        };
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        if let Some(target) = link {
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }
    tar.into_inner().unwrap().flush().unwrap();
}

/// Writes `items` as a `zip`, `tar` or `tar.gz` archive.
pub(crate) fn write_archive(path: &Path, format: &str, items: &[Item]) {
    match format {
        "zip" => write_zip(path, items),
        "tar" => write_tar(path, items, false),
        "tar.gz" => write_tar(path, items, true),
        _ => unreachable!("no archive format {format}"),
    }
}

/// A temp folder with `upload` (the archive) and `datasets/` (where dest goes) side by side.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("datasets")).unwrap();
        Fixture { dir }
    }
    pub(crate) fn upload(&self) -> PathBuf {
        self.dir.path().join("upload")
    }
    pub(crate) fn dest(&self) -> PathBuf {
        self.dir.path().join("datasets").join("ds")
    }
    pub(crate) fn import(&self, limits: &ImportLimits) -> Result<DatasetManifest, DatasetError> {
        import_archive(&self.upload(), &self.dest(), limits)
    }
    /// After a failed import: no dest, no staging folder, nothing but `upload` and `datasets/`.
    pub(crate) fn assert_clean(&self) {
        assert!(!self.dest().exists());
        let left: Vec<_> = fs::read_dir(self.dir.path().join("datasets")).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        let mut top: Vec<_> = fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        top.sort();
        assert_eq!(top, ["datasets", "upload"]);
    }
}

fn counts(manifest: &DatasetManifest) -> Vec<(&str, usize)> {
    manifest.classes.iter().map(|c| (c.name.as_str(), c.images)).collect()
}

fn two_classes() -> Vec<Item> {
    vec![Item::Dir("cats/".into()), file("cats/a.png", png()), file("cats/b.jpg", jpeg()), file("dogs/c.png", png())]
}

#[test]
fn imports_zip_tar_and_tar_gz() {
    for format in ["zip", "tar", "tar.gz"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &two_classes());
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(counts(&manifest), [("cats", 2), ("dogs", 1)], "{format}");
        assert_eq!(manifest.skipped, 0);
        assert!(fx.dest().join("cats/b.jpg").is_file());
        assert!(fx.dest().join("dogs/c.png").is_file());
        let expected: u64 = [png(), jpeg(), png()].iter().map(|b| b.len() as u64).sum();
        assert_eq!(manifest.total_bytes, expected);
        // Only dest remains beside it: the staging folder is gone.
        assert_eq!(fs::read_dir(fx.dir.path().join("datasets")).unwrap().count(), 1);
    }
}

#[test]
fn empty_zip_has_no_classes() {
    let fx = Fixture::new();
    write_zip(&fx.upload(), &[]);
    assert!(matches!(fx.import(&ImportLimits::default()), Err(DatasetError::NoClasses)));
    fx.assert_clean();
}

#[test]
fn parent_dir_entry_is_rejected_and_nothing_escapes() {
    for format in ["zip", "tar"] {
        let fx = Fixture::new();
        let items = [file("cats/a.png", png()), file("../evil", b"x".to_vec())];
        write_archive(&fx.upload(), format, &items);
        let err = fx.import(&ImportLimits::default()).unwrap_err();
        assert!(matches!(&err, DatasetError::UnsafeEntry { entry } if entry == "../evil"), "{format}: {err:?}");
        assert_eq!(err.code(), "unsafe_archive_entry");
        fx.assert_clean();
        assert!(!fx.dir.path().join("evil").exists());
    }
}

#[test]
fn absolute_backslash_and_drive_entries_are_rejected() {
    let names = ["/etc/evil", "cats/..\\..\\evil", "C:/evil", "cats/a/../../../evil"];
    for name in names {
        for format in ["zip", "tar"] {
            let fx = Fixture::new();
            let items = [file("cats/a.png", png()), file(name, png())];
            write_archive(&fx.upload(), format, &items);
            let err = fx.import(&ImportLimits::default()).unwrap_err();
            assert!(matches!(err, DatasetError::UnsafeEntry { .. }), "{format} {name}: {err:?}");
            fx.assert_clean();
        }
    }
}

#[test]
fn symlinks_are_rejected() {
    let items = [file("cats/a.png", png()), Item::Symlink("cats/b.png".into(), "/etc/passwd".into())];
    for format in ["zip", "tar"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &items);
        let err = fx.import(&ImportLimits::default()).unwrap_err();
        assert!(matches!(&err, DatasetError::UnsafeEntry { entry } if entry == "cats/b.png"), "{format}: {err:?}");
        fx.assert_clean();
    }
}

#[test]
fn hidden_and_macosx_entries_are_ignored() {
    let fx = Fixture::new();
    let items = [
        file("cats/a.png", png()),
        file("cats/.DS_Store", b"junk".to_vec()),
        file("__MACOSX/cats/._a.png", b"junk".to_vec()),
        file(".hidden/x.png", png()),
        file("dogs/b.png", png()),
    ];
    write_zip(&fx.upload(), &items);
    let manifest = fx.import(&ImportLimits::default()).unwrap();
    assert_eq!(counts(&manifest), [("cats", 1), ("dogs", 1)]);
    assert_eq!(manifest.skipped, 0);
    assert!(!fx.dest().join("cats/.DS_Store").exists());
}

#[test]
fn unpacked_size_limit_is_enforced() {
    // Highly compressible: the archive is tiny, the content is not.
    let items = [file("cats/a.png", png_then_zeros(300_000)), file("dogs/b.png", png_then_zeros(300_000))];
    let limits = ImportLimits { max_unpacked_bytes: 500_000, ..ImportLimits::default() };
    for format in ["zip", "tar.gz"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &items);
        assert!(fs::metadata(fx.upload()).unwrap().len() < 10_000);
        let err = fx.import(&limits).unwrap_err();
        assert!(matches!(err, DatasetError::TooLarge { limit: 500_000 }), "{format}: {err:?}");
        fx.assert_clean();
    }
}

#[test]
fn one_entry_over_the_size_limit_is_refused_by_its_header() {
    let items = [file("cats/a.png", png()), file("cats/big.png", png_then_zeros(300_000))];
    let limits = ImportLimits { max_entry_bytes: 200_000, ..ImportLimits::default() };
    for format in ["zip", "tar", "tar.gz"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &items);
        let err = fx.import(&limits).unwrap_err();
        assert!(
            matches!(&err, DatasetError::EntryTooLarge { entry, limit: 200_000 } if entry == "cats/big.png"),
            "{format}: {err:?}"
        );
        fx.assert_clean();
    }
}

#[test]
fn decompression_bombs_are_refused_before_they_are_written() {
    // 8 MiB that deflate to a few kilobytes: over 100:1 for the zip entry and the gzip stream
    // alike, whether the bytes look like an image or not.
    for bytes in [png_then_zeros(8 << 20), vec![0; 8 << 20]] {
        let items = [file("cats/a.png", png()), file("cats/bomb.png", bytes)];
        for format in ["zip", "tar.gz"] {
            let fx = Fixture::new();
            write_archive(&fx.upload(), format, &items);
            assert!(fs::metadata(fx.upload()).unwrap().len() < 100_000);
            let err = fx.import(&ImportLimits::default()).unwrap_err();
            assert!(matches!(err, DatasetError::TooCompressed { limit: 100, .. }), "{format}: {err:?}");
            fx.assert_clean();
        }
    }
    // The same bytes are accepted (as a corrupt image, skipped) when the ratio allowed is higher.
    let fx = Fixture::new();
    write_zip(&fx.upload(), &[file("cats/a.png", png()), file("cats/bomb.png", png_then_zeros(8 << 20))]);
    let limits = ImportLimits { max_compression_ratio: 100_000, ..ImportLimits::default() };
    let manifest = fx.import(&limits).unwrap();
    assert_eq!((counts(&manifest), manifest.skipped), (vec![("cats", 1)], 1));
}

#[test]
fn entries_that_are_not_images_are_skipped_without_being_written() {
    let items = [
        file("cats/a.png", png()),
        file("cats/notes.txt", b"not an image".to_vec()),
        file("dogs/b.jpg", jpeg()),
        file("dogs/empty.jpg", Vec::new()),
    ];
    for format in ["zip", "tar"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &items);
        let manifest = fx.import(&ImportLimits::default()).unwrap();
        assert_eq!(counts(&manifest), [("cats", 1), ("dogs", 1)], "{format}");
        let skipped: Vec<_> = manifest.skipped_examples.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
        assert_eq!(
            skipped,
            [("cats/notes.txt", "not a JPEG or PNG image"), ("dogs/empty.jpg", "not a JPEG or PNG image")],
            "{format}"
        );
        assert!(!fx.dest().join("cats/notes.txt").exists());
    }
}

#[test]
fn tar_hard_links_to_earlier_entries_are_copies() {
    let items = [
        file("cats/a.png", png()),
        Item::HardLink("cats/again.png".into(), "cats/a.png".into()),
        file("dogs/b.jpg", jpeg()),
        Item::HardLink("dogs/b-copy.jpg".into(), "./dogs/b.jpg".into()),
        file("dogs/notes.txt", b"text".to_vec()),
        Item::HardLink("dogs/notes-copy.txt".into(), "dogs/notes.txt".into()),
    ];
    let fx = Fixture::new();
    write_tar(&fx.upload(), &items, true);
    let manifest = fx.import(&ImportLimits::default()).unwrap();
    assert_eq!((counts(&manifest), manifest.skipped), (vec![("cats", 2), ("dogs", 2)], 2));
    assert_eq!(fs::read(fx.dest().join("cats/again.png")).unwrap(), png());
    assert_eq!(fs::read(fx.dest().join("dogs/b-copy.jpg")).unwrap(), jpeg());
    // Not a copy of the file it names, so editing one never changes the other.
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(fx.dest().join(p)).unwrap());
    assert_ne!(ino("cats/a.png"), ino("cats/again.png"));

    // A link to an entry that is not earlier in the archive (or outside it) is refused.
    for target in ["cats/later.png", "../outside.png", "/etc/passwd"] {
        let items = [
            Item::HardLink("cats/link.png".into(), target.into()),
            file("cats/later.png", png()),
            file("dogs/b.jpg", jpeg()),
        ];
        let fx = Fixture::new();
        write_tar(&fx.upload(), &items, false);
        let err = fx.import(&ImportLimits::default()).unwrap_err();
        assert!(matches!(&err, DatasetError::UnsafeEntry { entry } if entry == "cats/link.png"), "{target}: {err:?}");
        fx.assert_clean();
    }
}

#[test]
fn entry_count_limit_is_enforced() {
    let items: Vec<_> = (0..5).map(|i| file(&format!("cats/{i}.png"), png())).collect();
    let limits = ImportLimits { max_entries: 4, ..ImportLimits::default() };
    for format in ["zip", "tar"] {
        let fx = Fixture::new();
        write_archive(&fx.upload(), format, &items);
        let err = fx.import(&limits).unwrap_err();
        assert!(matches!(err, DatasetError::TooManyEntries { limit: 4 }), "{format}: {err:?}");
        fx.assert_clean();
    }
}

#[test]
fn not_an_archive_or_corrupt() {
    let fx = Fixture::new();
    let check = |bytes: &[u8], want: &str| {
        fs::write(fx.upload(), bytes).unwrap();
        let err = fx.import(&ImportLimits::default()).unwrap_err();
        assert_eq!(err.code(), want, "{err:?}");
        assert!(!err.is_server_error());
        fx.assert_clean();
    };
    check(b"", "not_an_archive");
    check(&(0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect::<Vec<_>>(), "not_an_archive");
    check(&png(), "not_an_archive");

    write_zip(&fx.upload(), &two_classes());
    let zip_bytes = fs::read(fx.upload()).unwrap();
    check(&zip_bytes[..zip_bytes.len() / 2], "corrupt_archive");
    check(&zip_bytes[..zip_bytes.len() - 10], "corrupt_archive");
    check(b"PK\x03\x04 and then garbage", "corrupt_archive");

    write_tar(&fx.upload(), &two_classes(), true);
    let gz_bytes = fs::read(fx.upload()).unwrap();
    check(&gz_bytes[..gz_bytes.len() / 2], "corrupt_archive");
    check(&[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "corrupt_archive");

    write_tar(&fx.upload(), &two_classes(), false);
    let tar_bytes = fs::read(fx.upload()).unwrap();
    // Cut inside the second file's data.
    check(&tar_bytes[..512 * 3 + 100], "corrupt_archive");
}

#[test]
fn duplicate_and_clashing_entries_are_corrupt() {
    let dup = [file("cats/a.png", png()), file("cats/a.png", png())];
    let clash = [file("cats", png()), file("cats/a.png", png())];
    for items in [&dup, &clash] {
        let fx = Fixture::new();
        write_tar(&fx.upload(), items, false);
        let err = fx.import(&ImportLimits::default()).unwrap_err();
        assert_eq!(err.code(), "corrupt_archive", "{err:?}");
        fx.assert_clean();
    }
}

#[test]
fn existing_dest_is_not_touched() {
    let fx = Fixture::new();
    write_zip(&fx.upload(), &two_classes());
    fs::create_dir(fx.dest()).unwrap();
    fs::write(fx.dest().join("keep"), b"x").unwrap();
    let err = fx.import(&ImportLimits::default()).unwrap_err();
    assert!(err.is_server_error());
    assert!(fx.dest().join("keep").is_file());
}

#[test]
fn sanitize_names() {
    let ok = |name: &str, want: Option<&str>| {
        assert_eq!(sanitize(name).unwrap(), want.map(PathBuf::from), "{name}");
    };
    ok("cats/a.jpg", Some("cats/a.jpg"));
    ok("./cats//a.jpg", Some("cats/a.jpg"));
    ok("cats/", Some("cats"));
    ok("cats/.DS_Store", None);
    ok("__MACOSX/cats/a.jpg", None);
    ok("./", None);
    for bad in ["/a", "a/../b", "..", "a\\b", "c:x", "a/\0b", &"x/".repeat(40)] {
        assert!(matches!(sanitize(bad), Err(DatasetError::UnsafeEntry { .. })), "{bad}");
    }
    assert!(sanitize(".hidden/../../x").is_err());
    let long = vec!["d".repeat(250); 5].join("/");
    assert!(matches!(sanitize(&long), Err(DatasetError::UnsafeEntry { .. })));
}
