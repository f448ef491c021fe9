//! Archive format detection and safe extraction of zip, tar and tar.gz uploads.
//!
//! Owns the guarantee that nothing is written outside the extraction directory: every entry name
//! is validated component by component (no absolute paths, `..`, drive prefixes, backslashes),
//! links and device entries are refused, files are created with `create_new` so an existing path
//! is never followed, and the bytes actually written (not the sizes headers claim) are counted
//! against the limit. It knows nothing about classes or images; `layout` does that afterwards.
//!
//! Errors from reading the archive are the upload's fault (`Corrupt`); errors from writing the
//! extracted files are the server's (`Io`).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::{DatasetError, ImportLimits};

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

/// Reads the first bytes of `path` and says which archive format it is.
pub(crate) fn detect_format(path: &Path) -> Result<Format, DatasetError> {
    let mut head = [0u8; 512];
    let mut filled = 0;
    let mut file = File::open(path)?;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
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

/// Extracts every regular file of the archive into `into`, which must be an empty directory.
pub(crate) fn extract(archive: &Path, format: Format, into: &Path, limits: &ImportLimits) -> Result<(), DatasetError> {
    let mut sink = Sink::new(into, limits);
    let reader = BufReader::new(File::open(archive)?);
    match format {
        Format::Zip => extract_zip(reader, &mut sink),
        Format::Tar => extract_tar(reader, &mut sink),
        Format::TarGz => extract_tar(flate2::read::GzDecoder::new(reader), &mut sink),
    }
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
            sink.write_file(&rel, &name, &mut file)?;
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
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(DatasetError::UnsafeEntry { entry: name });
        }
        if let Some(rel) = rel {
            let declared = entry.size();
            let written = sink.write_file(&rel, &name, &mut entry)?;
            // The entry reader stops early only when the archive ends inside the file's data.
            if written < declared {
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

/// Where extracted files go, with the running totals the limits are checked against.
struct Sink<'a> {
    root: &'a Path,
    limits: &'a ImportLimits,
    entries: u64,
    bytes: u64,
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(root: &'a Path, limits: &'a ImportLimits) -> Self {
        Sink {
            root,
            limits,
            entries: 0,
            bytes: 0,
            files: HashSet::new(),
            dirs: HashSet::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    fn count_entry(&mut self) -> Result<(), DatasetError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(DatasetError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    /// Copies one entry to `root/rel`, counting bytes as they are written. Returns the count.
    fn write_file(&mut self, rel: &Path, name: &str, src: &mut dyn Read) -> Result<u64, DatasetError> {
        // A name seen twice, or used both as a file and as a folder, would otherwise surface as a
        // filesystem error (the server's fault) or silently overwrite; it is the archive's fault.
        let clash = self.files.contains(rel)
            || self.dirs.contains(rel)
            || rel.ancestors().skip(1).any(|a| self.files.contains(a));
        if clash {
            return Err(corrupt(format!("entry `{name}` clashes with an earlier entry")));
        }
        for ancestor in rel.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() || !self.dirs.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        self.files.insert(rel.to_path_buf());

        let target = self.root.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        // create_new: never follow or overwrite anything already at the path.
        let mut out = OpenOptions::new().write(true).create_new(true).open(&target)?;
        let mut written = 0u64;
        loop {
            let n = match src.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(format!("reading entry `{name}`: {e}"))),
            };
            written += n as u64;
            self.bytes += n as u64;
            if self.bytes > self.limits.max_unpacked_bytes {
                return Err(DatasetError::TooLarge { limit: self.limits.max_unpacked_bytes });
            }
            out.write_all(&self.buf[..n])?;
        }
        Ok(written)
    }
}

#[cfg(test)]
#[path = "archive_tests.rs"]
pub(crate) mod tests;
