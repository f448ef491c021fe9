//! Request bodies into catalog uploads: the declared length checked first, the stream's errors
//! and the size bound answered as problem+json.

use bytes::Bytes;
use futures::Stream;

use super::error::ApiError;
use crate::catalog::{Upload, UploadError};

/// Refuses at once a body whose declared length is over the limit (before reading any of it).
pub fn check_declared_length(headers: &axum::http::HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Streams a request body into a catalog upload, answering in the API's terms: over the limit
/// is a 413 whichever side noticed (the stream itself, e.g. multipart's own limit, or the count).
pub async fn write_upload<S>(upload: &mut Upload, stream: S) -> Result<u64, ApiError>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    let limit = upload.limit();
    upload.write(stream).await.map_err(|error| match error {
        UploadError::TooLarge { .. } | UploadError::Body(ApiError::PayloadTooLarge { .. }) => {
            ApiError::PayloadTooLarge { limit }
        }
        UploadError::Body(other) => other,
        UploadError::Io(error) => ApiError::Io(error),
    })
}
