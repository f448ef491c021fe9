//! Our own JSON extractor, so a malformed body is answered in the same problem+json format as
//! every other error, with the path of the field that did not fit.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::bad_request(
                ErrorCode::UnsupportedMediaType,
                "expected a body with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::bad_request(ErrorCode::BodyTooLarge, "the JSON body is too large")
            } else {
                ApiError::bad_request(ErrorCode::UnreadableBody, rejection.body_text())
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses JSON, telling syntax errors (400) from a body of the wrong shape (422, with the path).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // serde_json reports some shape errors as syntax (an array longer than a fixed-size
        // one is "trailing characters"), so a syntax error counts only if the body does not
        // parse as JSON at all.
        let not_json =
            (inner.is_syntax() || inner.is_eof()) && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err();
        if not_json {
            ApiError::BadRequest {
                code: ErrorCode::MalformedJson,
                detail: format!("the body is not valid JSON: {inner}"),
                field: None,
            }
        } else {
            // The path already ends at the offending key, unknown fields included.
            let field = if path == "." || path.is_empty() { None } else { Some(path) };
            ApiError::BadRequest { code: ErrorCode::InvalidBody, detail: inner.to_string(), field }
        }
    })?;
    // Trailing garbage after the value is a syntax error too.
    deserializer.end().map_err(|inner| ApiError::BadRequest {
        code: ErrorCode::MalformedJson,
        detail: format!("the body is not valid JSON: {inner}"),
        field: None,
    })?;
    Ok(value)
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
