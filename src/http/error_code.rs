//! Every machine-readable error code the API sends, in one table: the code string clients match
//! on, the HTTP status it is answered with, and (through the status) its title.
//!
//! Handlers name a code; nothing compares strings to choose a status. The OpenAPI document lists
//! the codes from here (`Problem.code` is an enum), so a new code is documented by adding its row.
//! Never change an existing code string or its status: clients and tests match on them.

use std::borrow::Cow;

use axum::http::StatusCode;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = ($code:literal, $status:ident);)*) => {
        /// A stable machine-readable error code (`Problem.code`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The string clients match on.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

error_codes! {
    // Routing.
    /// No resource with that id.
    NotFound = ("not_found", NOT_FOUND);
    /// No endpoint at that path.
    NoRoute = ("no_route", NOT_FOUND);
    /// The path exists, not with that method.
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED);

    // Request bodies and parameters.
    /// The body is not syntactically JSON.
    MalformedJson = ("malformed_json", BAD_REQUEST);
    /// The body is JSON of the wrong shape; `field` names where.
    InvalidBody = ("invalid_body", UNPROCESSABLE_ENTITY);
    /// A JSON endpoint got another content type.
    UnsupportedMediaType = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE);
    /// A JSON body over the extractor's limit.
    BodyTooLarge = ("body_too_large", BAD_REQUEST);
    /// The body could not be read off the connection.
    UnreadableBody = ("unreadable_body", BAD_REQUEST);
    /// A `multipart/form-data` body that does not parse.
    InvalidMultipart = ("invalid_multipart", BAD_REQUEST);
    /// A multipart upload without its `file` field.
    MissingFile = ("missing_file", BAD_REQUEST);
    /// A name out of bounds.
    InvalidName = ("invalid_name", BAD_REQUEST);
    /// An upload over the configured size limit.
    UploadTooLarge = ("upload_too_large", PAYLOAD_TOO_LARGE);
    /// An unknown job state in a filter.
    InvalidState = ("invalid_state", BAD_REQUEST);
    /// A query parameter that does not parse (not a number, out of range, not one of the values).
    InvalidQuery = ("invalid_query", BAD_REQUEST);
    /// A `Last-Event-ID` that is not a non-negative integer.
    InvalidLastEventId = ("invalid_last_event_id", BAD_REQUEST);
    /// A path segment that does not decode (percent-encoded bytes that are not UTF-8).
    InvalidPath = ("invalid_path", BAD_REQUEST);
    /// An `Idempotency-Key` header that is empty, too long or not visible ASCII.
    InvalidIdempotencyKey = ("invalid_idempotency_key", BAD_REQUEST);
    /// The `Idempotency-Key` was used before on this operation with a different request.
    IdempotencyKeyReused = ("idempotency_key_reused", UNPROCESSABLE_ENTITY);

    // Training specs and weights.
    /// A job or model spec that cannot be trained; `field` names where.
    InvalidSpec = ("invalid_spec", UNPROCESSABLE_ENTITY);
    /// A weights upload naming an architecture (or width) that does not parse.
    InvalidArchitecture = ("invalid_architecture", BAD_REQUEST);
    /// A weights upload whose architecture parses but is refused by the weights check. The same
    /// string as [`ErrorCode::InvalidArchitecture`] with another status: that is what the API has
    /// always sent, so it stays.
    ArchitectureRejected = ("invalid_architecture", UNPROCESSABLE_ENTITY);
    /// An unknown weights format.
    InvalidFormat = ("invalid_format", BAD_REQUEST);
    /// A weights file that does not fit its architecture.
    WeightsMismatch = ("weights_mismatch", UNPROCESSABLE_ENTITY);

    // Dataset archives (and the zip of images `predict` takes).
    /// Neither zip, gzip nor tar.
    NotAnArchive = ("not_an_archive", BAD_REQUEST);
    /// An entry that would escape the dataset folder, or a link or device.
    UnsafeArchiveEntry = ("unsafe_archive_entry", BAD_REQUEST);
    /// Unpacks to more than the limit.
    ArchiveTooLarge = ("archive_too_large", PAYLOAD_TOO_LARGE);
    /// One entry larger than the per-entry limit, by its header or in fact.
    ArchiveEntryTooLarge = ("archive_entry_too_large", PAYLOAD_TOO_LARGE);
    /// A compression ratio beyond the limit: a decompression bomb.
    ArchiveTooCompressed = ("archive_too_compressed", PAYLOAD_TOO_LARGE);
    /// More entries than the limit.
    TooManyEntries = ("too_many_entries", BAD_REQUEST);
    /// No class folder with a valid image.
    NoClassFolders = ("no_class_folders", BAD_REQUEST);
    /// Truncated or inconsistent.
    CorruptArchive = ("corrupt_archive", BAD_REQUEST);
    /// The filesystem failed while importing (the server's fault).
    IoError = ("io_error", INTERNAL_SERVER_ERROR);

    // Prediction.
    /// Not a decodable JPEG or PNG.
    InvalidImage = ("invalid_image", BAD_REQUEST);
    /// More images in one request than allowed.
    TooManyImages = ("too_many_images", BAD_REQUEST);

    // State conflicts.
    /// The job already ended.
    JobFinished = ("job_finished", CONFLICT);
    /// The job has no checkpoint to predict with yet.
    NoCheckpoint = ("no_checkpoint", CONFLICT);
    /// The job has not succeeded, so its final weights have no evaluation (a kept checkpoint's
    /// has one: `?checkpoint=ID`).
    NoEvaluation = ("no_evaluation", CONFLICT);
    /// A queued or running job uses the dataset.
    DatasetInUse = ("dataset_in_use", CONFLICT);
    /// A queued or running job starts from the weights.
    BackboneInUse = ("backbone_in_use", CONFLICT);
    /// A request with the same `Idempotency-Key` is still being handled.
    IdempotencyKeyInUse = ("idempotency_key_in_use", CONFLICT);

    // Access and the server itself.
    /// No valid bearer or stream token.
    Unauthorized = ("unauthorized", UNAUTHORIZED);
    /// The readiness probe: the database or the workers are not ready.
    NotReady = ("not_ready", SERVICE_UNAVAILABLE);
    /// The server's disk is full: what the request would have stored was not stored.
    InsufficientStorage = ("insufficient_storage", INSUFFICIENT_STORAGE);
    /// Something failed on our side; the cause is logged, not sent.
    InternalError = ("internal_error", INTERNAL_SERVER_ERROR);
}

impl ErrorCode {
    /// The problem's `title`: the status's reason phrase, the same for every problem of a type
    /// (RFC 9457), and what the API has always sent.
    pub fn title(self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// The distinct code strings, in table order (two rows share `invalid_architecture`).
    pub fn strings() -> Vec<&'static str> {
        let mut strings: Vec<&'static str> = Vec::with_capacity(Self::ALL.len());
        for code in Self::ALL {
            if !strings.contains(&code.as_str()) {
                strings.push(code.as_str());
            }
        }
        strings
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Stable machine-readable error code; clients match on it."))
            .enum_values(Some(Self::strings()))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("ErrorCode")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case() {
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(!s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
        }
    }

    #[test]
    fn only_invalid_architecture_has_two_statuses() {
        for a in ErrorCode::ALL {
            for b in ErrorCode::ALL {
                if a != b && a.as_str() == b.as_str() {
                    assert_eq!(a.as_str(), "invalid_architecture");
                }
            }
        }
        assert_eq!(ErrorCode::strings().len(), ErrorCode::ALL.len() - 1);
    }

    #[test]
    fn statuses_and_titles_come_from_the_table() {
        assert_eq!(ErrorCode::UnsupportedMediaType.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(ErrorCode::InvalidBody.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(ErrorCode::MalformedJson.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorCode::NotFound.title(), "Not Found");
    }
}
