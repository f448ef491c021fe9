//! Archive format detection and safe extraction of zip, tar and tar.gz uploads.
//!
//! Owns the guarantee that nothing is written outside the extraction directory: every entry name
//! is validated component by component (no absolute paths, `..`, drive prefixes, backslashes),
//! symlinks and device entries are refused, a tar hard link is resolved only to an earlier entry
//! of the same archive (by copying it), files are created with `create_new` so an existing path
//! is never followed, and the bytes actually written (not the sizes headers claim) are counted
//! against the limits.
//!
//! Decompression bombs are refused before their bytes are written: an entry whose declared size
//! is over the per-entry bound, or whose declared or actual compression ratio is beyond sane
//! (zip entries one by one, a tar.gz as a whole stream), fails the import. Entries that do not
//! start like a JPEG or PNG are skipped without being written (and reported as skipped); the
//! full image check is `layout`'s, after extraction, as are classes.
//!
//! Errors from reading the archive are the upload's fault (`Corrupt`); errors from writing the
//! extracted files are the server's (`Io`).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::images::{looks_like_image, read_full, NOT_AN_IMAGE};
use super::{DatasetError, ImportLimits, SkippedFile};

/// Archive formats, told apart by magic bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Zip,
    Tar,
    TarGz,
}

/// Longest single path component most filesystems accept; longer would fail as a server `Io`
/// error, so such names are refused up front as the upload's fault.
const MAX_COMPONENT_BYTES: usize = 255;
/// Keeps the full extracted path well under PATH_MAX (4096 on Linux) with the staging prefix.
const MAX_NAME_BYTES: usize = 1024;
/// Deep nesting has no use in an image dataset and would make the later walks recurse deeply.
const MAX_DEPTH: usize = 32;
/// Below this many unpacked bytes the compression ratio is not judged: small files (a blank
/// PNG, an empty one) compress absurdly well and are harmless.
const RATIO_FLOOR_BYTES: u64 = 1 << 20;

/// Reads the first bytes of `path` and says which archive format it is.
pub(crate) fn detect_format(path: &Path) -> Result<Format, DatasetError> {
    let mut head = [0u8; 512];
    let filled = read_full(&mut File::open(path)?, &mut head)?;
    let head = &head[..filled];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::TarGz)
    } else if head.get(257..262) == Some(b"ustar") {
        // POSIX ("ustar\0") and GNU ("ustar ") headers both start with these five bytes.
        Ok(Format::Tar)
    } else {
        Err(DatasetError::NotAnArchive)
    }
}

/// Extracts every regular file of the archive that looks like an image into `into`, which must be
/// an empty directory. Returns the entries skipped as not images, in archive order.
pub(crate) fn extract(
    archive: &Path,
    format: Format,
    into: &Path,
    limits: &ImportLimits,
) -> Result<Vec<SkippedFile>, DatasetError> {
    let mut sink = Sink::new(into, limits);
    let reader = BufReader::new(File::open(archive)?);
    match format {
        Format::Zip => extract_zip(reader, &mut sink)?,
        Format::Tar => extract_tar(reader, &mut sink)?,
        Format::TarGz => {
            // The gzip stream as a whole: its ratio is judged on every read, skipped entries
            // included, since tar has to inflate those too.
            let compressed = Rc::new(Cell::new(0u64));
            let counted = Counting { inner: reader, count: compressed.clone() };
            let tripped = Rc::new(Cell::new(None));
            let guard = RatioGuard {
                inner: flate2::read::GzDecoder::new(counted),
                compressed,
                unpacked: 0,
                max_ratio: limits.max_compression_ratio,
                tripped: tripped.clone(),
            };
            let result = extract_tar(guard, &mut sink);
            // The guard's io error reaches us wrapped by tar; the cell says what it was.
            if let Some(ratio) = tripped.get() {
                return Err(DatasetError::TooCompressed {
                    entry: "the gzip stream".to_owned(),
                    ratio,
                    limit: limits.max_compression_ratio,
                });
            }
            result?
        }
    }
    Ok(sink.skipped)
}

fn corrupt(e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Corrupt(e.to_string())
}

fn extract_zip(reader: impl Read + io::Seek, sink: &mut Sink<'_>) -> Result<(), DatasetError> {
    let mut zip = zip::ZipArchive::new(reader).map_err(corrupt)?;
    // The central directory gives the count up front, so a huge one fails before any work.
    if zip.len() as u64 > sink.limits.max_entries {
        return Err(DatasetError::TooManyEntries { limit: sink.limits.max_entries });
    }
    for i in 0..zip.len() {
        sink.count_entry()?;
        let mut file = zip.by_index(i).map_err(corrupt)?;
        let name = file.name().map_err(corrupt)?.into_owned();
        let rel = sanitize(&name)?;
        if file.is_dir() {
            continue;
        }
        // Only regular files (or entries without Unix mode bits) are extracted; symlinks,
        // devices, fifos and sockets are refused whatever their name.
        let file_type = file.unix_mode().map_or(0, |m| m & 0o170000);
        if file.is_symlink() || !matches!(file_type, 0 | 0o100000) {
            return Err(DatasetError::UnsafeEntry { entry: name });
        }
        if let Some(rel) = rel {
            let (declared, compressed) = (file.size(), file.compressed_size());
            sink.check_declared(&name, declared, Some(compressed))?;
            sink.write_file(&rel, &name, &mut file, Some(compressed))?;
        }
    }
    Ok(())
}

fn extract_tar(reader: impl Read, sink: &mut Sink<'_>) -> Result<(), DatasetError> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        sink.count_entry()?;
        let kind = entry.header().entry_type();
        // Pax global headers are archive metadata, not files.
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        let name_bytes = entry.path_bytes().into_owned();
        let Ok(name) = String::from_utf8(name_bytes) else {
            // Class names must be text, and a lossy conversion could merge two entries.
            let entry = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            return Err(DatasetError::UnsafeEntry { entry });
        };
        let rel = sanitize(&name)?;
        if kind.is_dir() {
            continue;
        }
        if kind == tar::EntryType::Link {
            // `tar` stores a file seen twice as a hard link to its first copy.
            let target = entry.link_name_bytes().map(|t| String::from_utf8(t.into_owned()));
            let Some(Ok(target)) = target else {
                return Err(DatasetError::UnsafeEntry { entry: name });
            };
            sink.link(rel, &name, &target)?;
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(DatasetError::UnsafeEntry { entry: name });
        }
        if let Some(rel) = rel {
            let declared = entry.size();
            sink.check_declared(&name, declared, None)?;
            let written = sink.write_file(&rel, &name, &mut entry, None)?;
            // The entry reader stops early only when the archive ends inside the file's data
            // (a skipped entry reports 0; tar's own skip notices the truncation then).
            if written.is_some_and(|w| w < declared) {
                return Err(corrupt(format!("entry `{name}` is truncated")));
            }
        }
    }
    Ok(())
}

/// Validates an entry name. `Ok(None)`: a safe name to ignore (hidden, `__MACOSX`, empty);
/// `Ok(Some(path))`: the relative path to write; `Err`: an unsafe name.
fn sanitize(name: &str) -> Result<Option<PathBuf>, DatasetError> {
    let unsafe_entry = || DatasetError::UnsafeEntry { entry: name.to_owned() };
    // Backslashes are separators on Windows and NUL truncates names in C APIs: either could make
    // the name mean something other than what was checked.
    if name.starts_with('/') || name.contains('\\') || name.contains('\0') || name.len() > MAX_NAME_BYTES {
        return Err(unsafe_entry());
    }
    let mut path = PathBuf::new();
    let mut ignored = false;
    let mut depth = 0;
    for component in name.split('/') {
        match component {
            "" | "." => continue,
            ".." => return Err(unsafe_entry()),
            _ => {}
        }
        let bytes = component.as_bytes();
        let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
        if drive || bytes.len() > MAX_COMPONENT_BYTES {
            return Err(unsafe_entry());
        }
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(unsafe_entry());
        }
        // Keep validating the rest even once ignored, so a hidden prefix can't smuggle `..` past.
        ignored |= component.starts_with('.') || component == "__MACOSX";
        path.push(component);
    }
    Ok((!ignored && depth > 0).then_some(path))
}

/// Counts the bytes read through it into a shared cell.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Fails a read once more than `max_ratio` bytes have come out per byte that went in (past
/// [`RATIO_FLOOR_BYTES`]), recording the ratio in `tripped`.
struct RatioGuard<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    unpacked: u64,
    max_ratio: u64,
    tripped: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for RatioGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.unpacked += n as u64;
        let ratio = self.unpacked / self.compressed.get().max(1);
        if self.unpacked > RATIO_FLOOR_BYTES && ratio > self.max_ratio {
            self.tripped.set(Some(ratio));
            return Err(io::Error::other("compression ratio over the limit"));
        }
        Ok(n)
    }
}

/// What became of an earlier entry, for hard links to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extracted {
    Written,
    Skipped,
}

/// Where extracted files go, with the running totals the limits are checked against.
struct Sink<'a> {
    root: &'a Path,
    limits: &'a ImportLimits,
    entries: u64,
    bytes: u64,
    files: HashMap<PathBuf, Extracted>,
    dirs: HashSet<PathBuf>,
    skipped: Vec<SkippedFile>,
    buf: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(root: &'a Path, limits: &'a ImportLimits) -> Self {
        Sink {
            root,
            limits,
            entries: 0,
            bytes: 0,
            files: HashMap::new(),
            dirs: HashSet::new(),
            skipped: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Refuses an entry on what its header claims, before anything is read: its size, and for
    /// a zip entry its compression ratio.
    fn check_declared(&self, name: &str, size: u64, compressed: Option<u64>) -> Result<(), DatasetError> {
        if size > self.limits.max_entry_bytes {
            return Err(DatasetError::EntryTooLarge { entry: name.to_owned(), limit: self.limits.max_entry_bytes });
        }
        if let Some(compressed) = compressed {
            self.check_ratio(name, size, compressed)?;
        }
        Ok(())
    }

    fn check_ratio(&self, name: &str, unpacked: u64, compressed: u64) -> Result<(), DatasetError> {
        let ratio = unpacked / compressed.max(1);
        if unpacked > RATIO_FLOOR_BYTES && ratio > self.limits.max_compression_ratio {
            return Err(DatasetError::TooCompressed {
                entry: name.to_owned(),
                ratio,
                limit: self.limits.max_compression_ratio,
            });
        }
        Ok(())
    }

    /// A hard link `name` (sanitised to `rel`) to `target`: a copy of that earlier entry, or
    /// skipped like it. A link to anything not extracted before it is unsafe.
    fn link(&mut self, rel: Option<PathBuf>, name: &str, target: &str) -> Result<(), DatasetError> {
        let unsafe_entry = || DatasetError::UnsafeEntry { entry: name.to_owned() };
        let target_rel = sanitize(target).map_err(|_| unsafe_entry())?;
        let (Some(rel), Some(target_rel)) = (rel, target_rel) else {
            // A link to, or named as, an ignored entry (hidden, `__MACOSX`) is ignored as well.
            return Ok(());
        };
        match self.files.get(&target_rel) {
            Some(Extracted::Written) => {
                let mut source = File::open(self.root.join(&target_rel))?;
                self.write_file(&rel, name, &mut source, None)?;
                Ok(())
            }
            Some(Extracted::Skipped) => {
                self.claim(&rel, name)?;
                self.skip(&rel, Extracted::Skipped);
                Ok(())
            }
            None => Err(unsafe_entry()),
        }
    }

    /// Records `rel` as taken, refusing a name seen twice or used both as a file and a folder.
    fn claim(&mut self, rel: &Path, name: &str) -> Result<(), DatasetError> {
        // Otherwise it would surface as a filesystem error (the server's fault) or silently
        // overwrite; it is the archive's fault.
        let clash = self.files.contains_key(rel)
            || self.dirs.contains(rel)
            || rel.ancestors().skip(1).any(|a| self.files.contains_key(a));
        if clash {
            return Err(corrupt(format!("entry `{name}` clashes with an earlier entry")));
        }
        for ancestor in rel.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() || !self.dirs.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    fn skip(&mut self, rel: &Path, as_: Extracted) {
        self.files.insert(rel.to_path_buf(), as_);
        let path = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        self.skipped.push(SkippedFile { path, reason: NOT_AN_IMAGE.to_owned() });
    }

    fn count_entry(&mut self) -> Result<(), DatasetError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(DatasetError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    /// Copies one entry to `root/rel`, counting bytes as they are written, unless its first
    /// bytes are not an image's: then nothing is written. Returns the count (`None`: skipped).
    /// `compressed`: the entry's compressed size, to judge the ratio of what actually comes out.
    fn write_file(
        &mut self,
        rel: &Path,
        name: &str,
        src: &mut dyn Read,
        compressed: Option<u64>,
    ) -> Result<Option<u64>, DatasetError> {
        self.claim(rel, name)?;
        let read_error = |e: io::Error| corrupt(format!("reading entry `{name}`: {e}"));
        let mut head = [0u8; 8];
        let head_len = read_full(src, &mut head).map_err(read_error)?;
        let head = &head[..head_len];
        if !looks_like_image(head) {
            self.skip(rel, Extracted::Skipped);
            return Ok(None);
        }
        self.files.insert(rel.to_path_buf(), Extracted::Written);

        let target = self.root.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        // create_new: never follow or overwrite anything already at the path.
        let mut out = OpenOptions::new().write(true).create_new(true).open(&target)?;
        out.write_all(head)?;
        let mut written = head.len() as u64;
        self.bytes += written;
        loop {
            let n = match src.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            written += n as u64;
            self.bytes += n as u64;
            if self.bytes > self.limits.max_unpacked_bytes {
                return Err(DatasetError::TooLarge { limit: self.limits.max_unpacked_bytes });
            }
            // Headers can lie: what comes out is held to the same bounds as what they claim.
            if written > self.limits.max_entry_bytes {
                return Err(DatasetError::EntryTooLarge { entry: name.to_owned(), limit: self.limits.max_entry_bytes });
            }
            if let Some(compressed) = compressed {
                self.check_ratio(name, written, compressed)?;
            }
            out.write_all(&self.buf[..n])?;
        }
        Ok(Some(written))
    }
}

#[cfg(test)]
#[path = "archive_tests.rs"]
pub(crate) mod tests;
