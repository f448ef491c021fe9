//! Request bodies streamed to disk with a size bound, under a name removed whatever happens.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::error::ApiError;

/// Refuses at once a body whose declared length is over the limit (before reading any of it).
pub fn check_declared_length(headers: &axum::http::HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Streams chunks into a new file, refusing more than `limit` bytes; the file is fsynced so a
/// crash right after cannot leave a truncated archive that looks complete.
pub async fn write_limited<S>(stream: S, path: &Path, limit: u64) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    let mut file = tokio::fs::File::create(path).await?;
    let mut written = 0u64;
    futures::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match e {
            ApiError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge { limit },
            other => other,
        })?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(written)
}

/// An upload file that is removed whatever happens to the request.
pub struct TempUpload(pub PathBuf);

impl Drop for TempUpload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
