//! `Idempotency-Key` on the POSTs that create something (`create_job`, `create_dataset`): a
//! retried request with the same key and the same request gets the first answer again, with
//! `Idempotent-Replayed: true`, and creates nothing; the same key with a different request is 422;
//! while the first request is still being handled, a second one is 409.
//!
//! Only successful answers are kept (a failed request frees its key, so a retry runs again), for
//! [`KEY_LIFETIME`]. A key is reserved before the work starts, tied to the job or dataset in the
//! transaction that creates it, and answered after: a crash before the creation frees the key at
//! the next start; one after it leaves the key naming what it created, and a retry gets that.

use axum::extract::OptionalFromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};
use crate::db::{self, Pool};

/// The request header.
pub const HEADER: &str = "Idempotency-Key";
/// Set on an answer that is the stored first answer.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
/// How long a key's answer is kept.
pub const KEY_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// The longest key accepted (a UUID is 36).
pub const MAX_KEY_LEN: usize = 255;
/// An unanswered key that created nothing is taken over by a new request after this long: the
/// request that reserved it died without freeing it (long enough for a slow multi-gigabyte
/// upload to still be the one holding it).
pub const ABANDONED_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The operations that take a key; a key is scoped to one.
#[derive(Debug, Clone, Copy)]
pub enum Operation {
    CreateJob,
    CreateDataset,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::CreateJob => "create_job",
            Operation::CreateDataset => "create_dataset",
        }
    }
}

/// The header, as the OpenAPI document describes it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only documents the header: handlers take [`IdempotencyKey`].
pub struct IdempotencyParams {
    /// Makes a retry safe: the same key with the same request answers the first answer again
    /// and creates nothing (kept 24 hours); with a different request it is 422. A UUID suits.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[\x21-\x7E]{1,255}$"
    )]
    key: Option<String>,
}

/// A valid `Idempotency-Key` header: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(String);

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(u8::is_ascii_graphic) {
            return Err(ApiError::BadRequest {
                code: ErrorCode::InvalidIdempotencyKey,
                detail: format!("{HEADER} must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                field: Some(HEADER.into()),
            });
        }
        Ok(Some(Self(String::from_utf8_lossy(bytes).into_owned())))
    }
}

/// What a request with a key found.
pub enum Claim {
    /// The key is new: this request does the work, then [`finish`]es.
    First(Reservation),
    /// The key was answered before.
    Answered(StoredAnswer),
    /// The key's request created its job or dataset, but its answer was not recorded (it died in
    /// between, or is finishing now): a retry is answered with that resource as it is now.
    Created(CreatedResource),
}

/// Takes `key` for `operation`, or finds what it was used for. Keys older than [`KEY_LIFETIME`]
/// are forgotten first.
pub async fn claim(pool: &Pool, operation: Operation, key: IdempotencyKey) -> Result<Claim, ApiError> {
    let now = db::now();
    db::idempotency::delete_older_than(pool, now - KEY_LIFETIME).await?;
    // The guard exists before the row does: a request dropped while the insert runs still
    // frees what it inserted.
    let mut reservation = Reservation {
        pool: pool.clone(),
        operation,
        key: key.0.clone(),
        token: uuid::Uuid::new_v4().to_string(),
        answered: false,
    };
    if db::idempotency::reserve(pool, operation.as_str(), &key.0, &reservation.token, now, now - ABANDONED_AFTER)
        .await?
    {
        return Ok(Claim::First(reservation));
    }
    // Not ours: nothing to free.
    reservation.answered = true;
    let row = db::idempotency::get(pool, operation.as_str(), &key.0).await?;
    match row {
        Some(db::idempotency::KeyRow {
            request_hash: Some(request_hash),
            status: Some(status),
            response: Some(body),
            ..
        }) => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| ApiError::Internal(format!("stored idempotent status {status}")))?;
            Ok(Claim::Answered(StoredAnswer { request_hash, status, body }))
        }
        Some(db::idempotency::KeyRow { request_hash: Some(request_hash), resource_id: Some(resource_id), .. }) => {
            Ok(Claim::Created(CreatedResource { request_hash, resource_id }))
        }
        // In flight (or freed between the two statements: a retry will find it free).
        _ => Err(ApiError::Conflict {
            code: ErrorCode::IdempotencyKeyInUse,
            detail: format!("a request with this {HEADER} is still being handled; retry when it has been answered"),
        }),
    }
}

/// The job or dataset a key's request created, without its recorded answer.
pub struct CreatedResource {
    request_hash: String,
    resource_id: String,
}

impl CreatedResource {
    /// Its id, if this request is the same as the one that created it.
    pub fn id_for(&self, request_hash: &str) -> Result<&str, ApiError> {
        check_same(&self.request_hash, request_hash)?;
        Ok(&self.resource_id)
    }
}

/// Refuses a request that differs from the key's first one.
fn check_same(first: &str, this: &str) -> Result<(), ApiError> {
    if first == this {
        return Ok(());
    }
    Err(ApiError::BadRequest {
        code: ErrorCode::IdempotencyKeyReused,
        detail: format!("this {HEADER} was used with a different request; use a new key for a new request"),
        field: Some(HEADER.into()),
    })
}

/// `body` with `status`, marked as the answer to a retry.
pub fn replayed(status: StatusCode, body: &impl Serialize) -> Result<Response, ApiError> {
    let body = serde_json::to_string(body).map_err(|e| ApiError::Internal(format!("encoding the answer: {e}")))?;
    Ok(mark_replayed(json_response(status, body)))
}

fn mark_replayed(mut response: Response) -> Response {
    response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// The first answer to a key.
pub struct StoredAnswer {
    request_hash: String,
    status: StatusCode,
    body: String,
}

impl StoredAnswer {
    /// The first answer again, if this request is the same as the first one.
    pub fn replay(self, request_hash: &str) -> Result<Response, ApiError> {
        check_same(&self.request_hash, request_hash)?;
        Ok(mark_replayed(json_response(self.status, self.body)))
    }
}

/// A key held by the request handling it; dropped unanswered (the request failed or its client
/// went away), it is freed.
pub struct Reservation {
    pool: Pool,
    operation: Operation,
    key: String,
    /// Names this request in the row, so that nothing it does later can touch a reservation of
    /// another request under the same key.
    token: String,
    answered: bool,
}

impl Reservation {
    /// The key, to be tied to what the request creates in the transaction that creates it.
    pub fn key_claim<'a>(&'a self, request_hash: &'a str) -> db::idempotency::KeyClaim<'a> {
        db::idempotency::KeyClaim {
            operation: self.operation.as_str(),
            key: &self.key,
            token: &self.token,
            request_hash,
        }
    }

    /// Frees the key of a request that failed, before its error is answered (so that a retry
    /// that follows the error at once finds the key free).
    pub async fn release(mut self) {
        if let Err(error) = db::idempotency::release(&self.pool, self.operation.as_str(), &self.key, &self.token).await
        {
            // It is taken over once abandoned (ABANDONED_AFTER).
            tracing::warn!(%error, "the idempotency key of a failed request could not be freed");
        }
        self.answered = true;
    }

    /// Stores the answer under the key. The job or dataset exists by now (and the key names it),
    /// so a failure here is logged, not answered: a retry gets what was created.
    async fn answer(mut self, request_hash: &str, status: StatusCode, body: &str) {
        let claim = self.key_claim(request_hash);
        if let Err(error) = db::idempotency::complete(&self.pool, claim, status.as_u16(), body).await {
            tracing::warn!(%error, "the answer to an idempotent request could not be stored; a retry gets what it created");
        }
        self.answered = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let (pool, operation) = (self.pool.clone(), self.operation);
        let (key, token) = (std::mem::take(&mut self.key), std::mem::take(&mut self.token));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = db::idempotency::release(&pool, operation.as_str(), &key, &token).await {
                    tracing::warn!(%error, "an unanswered idempotency key could not be freed");
                }
            });
        }
    }
}

/// The SHA-256 (hex) of the parts of a request that say what it asks for.
pub fn request_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so that moving bytes from one part to the next changes the hash.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Answers the outcome of the work a key was claimed for: a success is stored under the key
/// (when there is one) and sent with `status`; a failure frees the key and is sent as it is.
pub async fn finish(
    reservation: Option<Reservation>,
    request_hash: &str,
    status: StatusCode,
    outcome: Result<impl Serialize, ApiError>,
) -> Result<Response, ApiError> {
    let encoded = outcome.and_then(|body| {
        serde_json::to_string(&body).map_err(|e| ApiError::Internal(format!("encoding the answer: {e}")))
    });
    match (encoded, reservation) {
        (Ok(body), Some(reservation)) => {
            reservation.answer(request_hash, status, &body).await;
            Ok(json_response(status, body))
        }
        (Ok(body), None) => Ok(json_response(status, body)),
        (Err(error), Some(reservation)) => {
            reservation.release().await;
            Err(error)
        }
        (Err(error), None) => Err(error),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}
