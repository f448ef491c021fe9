//! Our own query-string extractor, so a bad parameter (`?limit=abc`, a number out of range, an
//! unknown enum value) is answered in problem+json naming the parameter, like every other error,
//! instead of axum's plain-text rejection.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Parses a query string, naming the parameter that did not fit.
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." || path.is_empty() { None } else { Some(path) };
        match field {
            Some(name) => invalid_parameter(&name, error.inner()),
            None => ApiError::BadRequest {
                code: ErrorCode::InvalidQuery,
                detail: format!("the query string: {}", error.inner()),
                field: None,
            },
        }
    })
}

/// A query parameter that parsed but is not acceptable (out of range), named with why.
pub fn invalid_parameter(name: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest {
        code: ErrorCode::InvalidQuery,
        detail: format!("query parameter `{name}`: {why}"),
        field: Some(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Params {
        limit: Option<u32>,
        name: Option<String>,
    }

    #[test]
    fn a_bad_parameter_is_named() {
        let error = parse::<Params>("limit=9223372036854775808").unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidQuery);
        assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(error.to_string().contains("`limit`"), "{error}");
        assert!(parse::<Params>("limit=3&name=x").is_ok());
        assert!(parse::<Params>("").is_ok());
    }
}
