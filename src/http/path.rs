//! Our own path extractor, so a path segment that does not decode (percent-encoded bytes that
//! are not UTF-8) is answered in problem+json like every other error, instead of axum's
//! plain-text rejection.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::BadRequest {
                code: ErrorCode::InvalidPath,
                detail: rejection.body_text(),
                field: path_field(&rejection),
            }),
        }
    }
}

/// The path parameter a rejection is about, when axum says.
fn path_field(rejection: &axum::extract::rejection::PathRejection) -> Option<String> {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    let PathRejection::FailedToDeserializePathParams(error) = rejection else { return None };
    match error.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } | ErrorKind::ParseErrorAtKey { key, .. } => Some(key.clone()),
        ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
        _ => None,
    }
}
