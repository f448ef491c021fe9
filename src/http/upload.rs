//! Request bodies into catalog uploads: the declared length checked first, the stream's errors
//! and the size bound answered as problem+json.

use bytes::Bytes;
use futures::Stream;

use super::error::{ApiError, ErrorCode};
use crate::catalog::{Upload, UploadError};

/// Refuses at once a body whose declared length is over the limit (before reading any of it).
pub fn check_declared_length(headers: &axum::http::HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// The bound on a dataset's or weights' name, in characters (the `name` parameter's schema
/// states the same: `minLength`, `maxLength`, a non-space).
pub const MAX_NAME_CHARS: usize = 200;

/// Refuses a name that is blank or longer than [`MAX_NAME_CHARS`].
pub fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::BadRequest {
            code: ErrorCode::InvalidName,
            detail: format!("name must be 1 to {MAX_NAME_CHARS} characters, not all spaces"),
            field: Some("name".into()),
        });
    }
    Ok(())
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
