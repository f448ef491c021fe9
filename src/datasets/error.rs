//! The one error type of dataset import, with a stable machine code per variant.
//!
//! Only [`DatasetError::Io`] is the server's fault; every other variant describes something wrong
//! with the upload, so the HTTP layer can answer it as a client error.

/// Why an archive could not be imported as a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file starts with neither zip, gzip nor ustar magic bytes.
    #[error("the upload is not a zip, tar or tar.gz archive")]
    NotAnArchive,
    /// An entry would escape the extraction directory, or is a link or device file.
    #[error(
        "archive entry `{entry}` is not allowed: absolute paths, `..`, drive prefixes, \
         backslashes, links and device files are refused"
    )]
    UnsafeEntry {
        /// The entry's name as stored in the archive (lossily decoded).
        entry: String,
    },
    /// The archive unpacks to more bytes than allowed.
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: u64,
    },
    /// One entry is larger than allowed, by its header or by what it unpacked to.
    #[error("archive entry `{entry}` unpacks to more than {limit} bytes")]
    EntryTooLarge {
        /// The entry's name as stored in the archive.
        entry: String,
        /// The per-entry limit, in bytes.
        limit: u64,
    },
    /// An entry (or a tar.gz stream) unpacks to far more than it takes in the archive: a
    /// decompression bomb, refused before its bytes are written.
    #[error("archive entry `{entry}` is compressed {ratio}:1, beyond the limit of {limit}:1")]
    TooCompressed {
        /// The entry's name, or `the gzip stream` for a tar.gz.
        entry: String,
        /// Unpacked bytes per compressed byte, when it was refused.
        ratio: u64,
        /// The ratio allowed.
        limit: u64,
    },
    /// The archive holds more entries than allowed.
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// No class folder holds a valid image.
    #[error(
        "no class folders with valid JPEG or PNG images found; expected `<class>/<image>` at the \
         top of the archive, optionally inside one wrapping folder"
    )]
    NoClasses,
    /// The archive itself is unreadable: truncated, bad checksums, inconsistent entries.
    #[error("the archive is corrupt or truncated: {0}")]
    Corrupt(String),
    /// A local filesystem error while writing the dataset (the server's fault).
    #[error("I/O error while importing the dataset: {0}")]
    Io(#[from] std::io::Error),
}

impl DatasetError {
    /// A stable snake_case code for clients to match on; never change an existing one.
    pub fn code(&self) -> &'static str {
        match self {
            DatasetError::NotAnArchive => "not_an_archive",
            DatasetError::UnsafeEntry { .. } => "unsafe_archive_entry",
            DatasetError::TooLarge { .. } => "archive_too_large",
            DatasetError::EntryTooLarge { .. } => "archive_entry_too_large",
            DatasetError::TooCompressed { .. } => "archive_too_compressed",
            DatasetError::TooManyEntries { .. } => "too_many_entries",
            DatasetError::NoClasses => "no_class_folders",
            DatasetError::Corrupt(_) => "corrupt_archive",
            DatasetError::Io(error) if crate::disk::is_full(error) => "insufficient_storage",
            DatasetError::Io(_) => "io_error",
        }
    }

    /// Whether the error is the server's fault rather than the upload's.
    pub fn is_server_error(&self) -> bool {
        matches!(self, DatasetError::Io(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let errors = [
            DatasetError::NotAnArchive,
            DatasetError::UnsafeEntry { entry: "../x".into() },
            DatasetError::TooLarge { limit: 1 },
            DatasetError::TooManyEntries { limit: 1 },
            DatasetError::EntryTooLarge { entry: "x".into(), limit: 1 },
            DatasetError::TooCompressed { entry: "x".into(), ratio: 2, limit: 1 },
            DatasetError::NoClasses,
            DatasetError::Corrupt("x".into()),
            DatasetError::Io(std::io::Error::other("x")),
        ];
        let codes: Vec<_> = errors.iter().map(DatasetError::code).collect();
        assert_eq!(
            codes,
            [
                "not_an_archive",
                "unsafe_archive_entry",
                "archive_too_large",
                "too_many_entries",
                "archive_entry_too_large",
                "archive_too_compressed",
                "no_class_folders",
                "corrupt_archive",
                "io_error"
            ]
        );
        assert_eq!(errors.iter().filter(|e| e.is_server_error()).count(), 1);
    }
}
