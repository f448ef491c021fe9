//! An upload streamed to a temporary file with a size bound, removed whatever happens unless the
//! catalog moves it into place.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why a body could not be written to its upload file.
#[derive(Debug, thiserror::Error)]
pub enum UploadError<E> {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// The body stream failed (the client's side); the caller's own error.
    #[error("{0}")]
    Body(E),
    #[error("I/O error while writing the upload")]
    Io(#[from] std::io::Error),
}

/// A temporary file under the uploads folder, named by the id the stored item will have.
pub struct Upload {
    id: String,
    path: PathBuf,
    limit: u64,
    written: u64,
    /// SHA-256 (hex) of the bytes written, once all were.
    sha256: String,
}

impl Upload {
    pub(super) fn new(dir: &Path, limit: u64) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let path = dir.join(format!("{id}.upload"));
        Self { id, path, limit, written: 0, sha256: String::new() }
    }

    /// The id the dataset or weights will be stored under.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.written
    }

    /// SHA-256 (hex) of the whole body, once [`Upload::write`] returned.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Streams chunks into the (new) file, refusing more than the limit; the file is fsynced so
    /// a crash right after cannot leave a truncated archive that looks complete. Returns the
    /// bytes written.
    pub async fn write<S, E>(&mut self, stream: S) -> Result<u64, UploadError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let mut file = tokio::fs::File::create(&self.path).await?;
        let mut written = 0u64;
        let mut hasher = Sha256::new();
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(UploadError::Body)?;
            written += chunk.len() as u64;
            if written > self.limit {
                return Err(UploadError::TooLarge { limit: self.limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        self.written = written;
        self.sha256 = hex::encode(hasher.finalize());
        Ok(written)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // NotFound once the file was moved into place (or never created) is expected.
        let _ = std::fs::remove_file(&self.path);
    }
}
