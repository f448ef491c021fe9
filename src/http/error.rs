//! The one HTTP error type: every failure a client sees is `application/problem+json`
//! (RFC 9457) with a stable machine-readable `code` and, where a field was wrong, its path.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::datasets::DatasetError;
use crate::jobs::JobsError;
use crate::train::{SpecError, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("the upload is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    Archive(DatasetError),
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    /// An uploaded weights file that does not fit its architecture.
    #[error("the weights do not fit the architecture: {0}")]
    Weights(#[from] WeightsError),
    /// The body is not JSON at all (syntax), or has the wrong content type.
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String, field: Option<String> },
    /// No valid `Authorization: Bearer` token (or stream token) where one is required.
    #[error("{0}")]
    Unauthorized(String),
    /// Not ready to serve (readiness probe): the database or the workers.
    #[error("{0}")]
    Unavailable(String),
    /// Something on our side; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:tanuki:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_spec`, `not_found`, `upload_too_large`.
    pub code: String,
    /// JSON path of the offending field, when one field was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Carried on 5xx responses so the logging middleware can log the cause once.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl ApiError {
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { resource, id: id.into() }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest { code, detail: detail.into(), field: None }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Archive(DatasetError::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Archive(
                DatasetError::TooLarge { .. } | DatasetError::EntryTooLarge { .. } | DatasetError::TooCompressed { .. },
            ) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Archive(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidSpec(_) | ApiError::Weights(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { code, .. } if *code == "unsupported_media_type" => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::BadRequest { code, .. } if *code == "invalid_body" => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } => "not_found",
            ApiError::NoRoute(_) => "no_route",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { code, .. } => code,
            ApiError::PayloadTooLarge { .. } => "upload_too_large",
            ApiError::Archive(error) => error.code(),
            ApiError::InvalidSpec(_) => "invalid_spec",
            ApiError::Weights(WeightsError::Spec(_)) => "invalid_architecture",
            ApiError::Weights(_) => "weights_mismatch",
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Unavailable(_) => "not_ready",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidSpec(error) | ApiError::Weights(WeightsError::Spec(error)) => Some(error.field.clone()),
            ApiError::BadRequest { field, .. } => field.clone(),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A readiness failure says what is not ready; other 5xx details stay in the log.
        let detail = if status.is_server_error() && !matches!(self, ApiError::Unavailable(_)) {
            "the server failed to handle this request".to_owned()
        } else {
            self.to_string()
        };
        let problem = Problem {
            kind: format!("urn:tanuki:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: self.code().to_owned(),
            field: self.field(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if status.is_server_error() {
            response.extensions_mut().insert(InternalCause(self.to_string()));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(format!("database: {error}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> Self {
        ApiError::Internal(format!("io: {error}"))
    }
}

impl From<JobsError> for ApiError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::NotFound(id) => ApiError::not_found("job", id),
            JobsError::InvalidSpec(spec) => ApiError::InvalidSpec(spec),
            JobsError::AlreadyFinished { .. } => ApiError::Conflict { code: "job_finished", detail: error.to_string() },
            JobsError::Db(error) => error.into(),
            JobsError::Encoding(error) => ApiError::Internal(error.to_string()),
            JobsError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<DatasetError> for ApiError {
    fn from(error: DatasetError) -> Self {
        ApiError::Archive(error)
    }
}
