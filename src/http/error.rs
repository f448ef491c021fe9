//! The one HTTP error type: every failure a client sees is `application/problem+json`
//! (RFC 9457) with a stable machine-readable `code` and, where a field was wrong, its path.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub use super::error_code::ErrorCode;
use crate::catalog::CatalogError;
use crate::datasets::DatasetError;
use crate::disk;
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
    Conflict { code: ErrorCode, detail: String },
    #[error("the upload is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error(transparent)]
    Archive(DatasetError),
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    /// An uploaded weights file that does not fit its architecture.
    #[error("the weights do not fit the architecture: {0}")]
    Weights(#[from] WeightsError),
    /// Something wrong with the request other than a spec: its body, a parameter, a header.
    #[error("{detail}")]
    BadRequest { code: ErrorCode, detail: String, field: Option<String> },
    /// No valid `Authorization: Bearer` token (or stream token) where one is required.
    #[error("{0}")]
    Unauthorized(String),
    /// The disk has no room for what the request would store; says how much was asked for.
    #[error("{0}")]
    InsufficientStorage(String),
    /// Not ready to serve (readiness probe): the database or the workers.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed; the cause is logged, never sent.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The filesystem failed; the cause is logged, never sent.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    /// A blocking task panicked or was cancelled; the cause is logged, never sent.
    #[error("a blocking task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The catalog's own server-side failures (a stored row that does not parse); logged, never sent.
    #[error("catalog error")]
    Catalog(#[source] CatalogError),
    /// Something else on our side with no error value of its own; logged, never sent.
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
    pub code: ErrorCode,
    /// JSON path of the offending field, when one field was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Carried on 5xx responses so the logging middleware can log the cause once: the error and
/// its whole source chain, `: `-separated.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl InternalCause {
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            // Many errors print their source in their own message too; say each cause once.
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        InternalCause(text)
    }
}

impl ApiError {
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { resource, id: id.into() }
    }

    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::BadRequest { code, detail: detail.into(), field: None }
    }

    /// The status, read from the code's row in the table.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::NotFound { .. } => ErrorCode::NotFound,
            ApiError::NoRoute(_) => ErrorCode::NoRoute,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::Conflict { code, .. } | ApiError::BadRequest { code, .. } => *code,
            ApiError::PayloadTooLarge { .. } => ErrorCode::UploadTooLarge,
            ApiError::Archive(error) => dataset_code(error),
            ApiError::InvalidSpec(_) => ErrorCode::InvalidSpec,
            ApiError::Weights(WeightsError::Spec(_)) => ErrorCode::ArchitectureRejected,
            ApiError::Weights(_) => ErrorCode::WeightsMismatch,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Unavailable(_) => ErrorCode::NotReady,
            ApiError::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            ApiError::Io(error) if disk::is_full(error) => ErrorCode::InsufficientStorage,
            ApiError::Database(error) if disk::is_database_full(error) => ErrorCode::InsufficientStorage,
            ApiError::Database(_)
            | ApiError::Io(_)
            | ApiError::Task(_)
            | ApiError::Catalog(_)
            | ApiError::Internal(_) => ErrorCode::InternalError,
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
        let code = self.code();
        // A readiness failure says what is not ready, a full disk says so; other 5xx details
        // stay in the log.
        let detail = match &self {
            ApiError::Unavailable(_) | ApiError::InsufficientStorage(_) => self.to_string(),
            _ if code == ErrorCode::InsufficientStorage => {
                "the server's disk is full: nothing of this request was stored".to_owned()
            }
            _ if status.is_server_error() => "the server failed to handle this request".to_owned(),
            _ => self.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:tanuki:problem:{code}"),
            title: code.title().to_owned(),
            status: status.as_u16(),
            detail,
            code,
            field: self.field(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if status.is_server_error() {
            response.extensions_mut().insert(InternalCause::of(&self));
        }
        response
    }
}

/// Which row of the table a dataset import error is.
fn dataset_code(error: &DatasetError) -> ErrorCode {
    match error {
        DatasetError::NotAnArchive => ErrorCode::NotAnArchive,
        DatasetError::UnsafeEntry { .. } => ErrorCode::UnsafeArchiveEntry,
        DatasetError::TooLarge { .. } => ErrorCode::ArchiveTooLarge,
        DatasetError::TooManyEntries { .. } => ErrorCode::TooManyEntries,
        DatasetError::EntryTooLarge { .. } => ErrorCode::ArchiveEntryTooLarge,
        DatasetError::TooCompressed { .. } => ErrorCode::ArchiveTooCompressed,
        DatasetError::NoClasses => ErrorCode::NoClassFolders,
        DatasetError::Corrupt(_) => ErrorCode::CorruptArchive,
        DatasetError::Io(error) if disk::is_full(error) => ErrorCode::InsufficientStorage,
        DatasetError::Io(_) => ErrorCode::IoError,
    }
}

impl From<JobsError> for ApiError {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::NotFound(id) => ApiError::not_found("job", id),
            JobsError::InvalidSpec(spec) => ApiError::InvalidSpec(spec),
            JobsError::AlreadyFinished { .. } => {
                ApiError::Conflict { code: ErrorCode::JobFinished, detail: error.to_string() }
            }
            JobsError::Db(error) => ApiError::Database(error),
            JobsError::Encoding(error) => ApiError::Internal(error.to_string()),
            JobsError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            CatalogError::NotFound { resource, id } => ApiError::NotFound { resource, id },
            CatalogError::DatasetInUse(_) => {
                ApiError::Conflict { code: ErrorCode::DatasetInUse, detail: error.to_string() }
            }
            CatalogError::BackboneInUse(_) => {
                ApiError::Conflict { code: ErrorCode::BackboneInUse, detail: error.to_string() }
            }
            CatalogError::Dataset(error) => ApiError::Archive(error),
            CatalogError::Weights(error) => ApiError::Weights(error),
            CatalogError::Database(error) => ApiError::Database(error),
            CatalogError::Io(error) => ApiError::Io(error),
            CatalogError::Task(error) => ApiError::Task(error),
            error @ CatalogError::StoredRow { .. } => ApiError::Catalog(error),
        }
    }
}

impl From<DatasetError> for ApiError {
    fn from(error: DatasetError) -> Self {
        ApiError::Archive(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `datasets` names its codes itself (it cannot import `http`); the table must agree.
    #[test]
    fn dataset_errors_map_to_the_rows_of_their_own_codes() {
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
            DatasetError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        ];
        for error in errors {
            let code = dataset_code(&error);
            assert_eq!(code.as_str(), error.code());
            assert_eq!(code.status().is_server_error(), error.is_server_error(), "{code}");
        }
    }

    #[test]
    fn the_logged_cause_has_the_whole_chain_once() {
        let error = ApiError::from(DatasetError::Io(std::io::Error::other("disk full")));
        assert_eq!(InternalCause::of(&error).0, "I/O error while importing the dataset: disk full");
        let error = ApiError::Io(std::io::Error::other("disk full"));
        assert_eq!(InternalCause::of(&error).0, "I/O error: disk full");
    }
}
