//! Request bodies into catalog uploads: the declared length checked first, the stream's errors
//! and the size bound answered as problem+json.

use std::path::Path;

use bytes::Bytes;
use futures::Stream;

use super::error::{ApiError, ErrorCode};
use crate::catalog::{Upload, UploadError};
use crate::disk;

/// Refuses at once (before reading any of it) a body whose declared length is over the limit
/// (413), or more than the disk holding `data_dir` has room for (507).
pub fn check_declared_length(headers: &axum::http::HeaderMap, limit: u64, data_dir: &Path) -> Result<(), ApiError> {
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(length) = declared else {
        return Ok(());
    };
    if length > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // Where the space cannot be read, the write itself will tell.
    if let Ok(space) = disk::space(data_dir) {
        if length > space.available_bytes {
            return Err(ApiError::InsufficientStorage(format!(
                "the body is {length} bytes and the server's disk has {} bytes free: nothing was stored",
                space.available_bytes
            )));
        }
    }
    Ok(())
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
    futures::pin_mut!(stream);
    // What is left of a refused body is read by `unread_body` before the answer goes out.
    upload.write(stream.as_mut()).await.map_err(|error| match error {
        UploadError::TooLarge { .. } | UploadError::Body(ApiError::PayloadTooLarge { .. }) => {
            ApiError::PayloadTooLarge { limit }
        }
        UploadError::Body(other) => other,
        UploadError::Io(error) => ApiError::Io(error),
    })
}
