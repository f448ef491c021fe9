//! API tokens: `Authorization: Bearer <token>` on every endpoint except the probes and the
//! dashboard shell, compared in constant time; and short-lived stream tokens, because the
//! browser's EventSource cannot send headers.
//!
//! A stream token is `<job_id>.<expires unix seconds>.<hex HMAC-SHA256>` under a key drawn at
//! start. It is accepted only as `?access_token=` on that one job's `/events`, and only when the
//! connection opens (a stream may outlive its token). A restart invalidates every stream token.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Problem};
use super::jobs::load_job;
use super::json::Json;
use super::AppState;

/// How long a stream token can be used to open a stream.
pub const STREAM_TOKEN_TTL_SECS: i64 = 120;

/// The configured tokens (as SHA-256 digests, so comparison time says nothing of their length)
/// and the stream-token key.
pub struct Auth {
    digests: Vec<[u8; 32]>,
    key: [u8; 32],
}

impl Auth {
    /// `None` when no token is configured: the API is open.
    pub fn new(tokens: &[String]) -> Option<Self> {
        if tokens.is_empty() {
            return None;
        }
        let digests = tokens.iter().map(|t| Sha256::digest(t.as_bytes()).into()).collect();
        Some(Self { digests, key: rand::random() })
    }

    /// Constant time in the token's content: every configured digest is compared, always.
    pub fn accepts_bearer(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut ok = subtle::Choice::from(0);
        for known in &self.digests {
            ok |= known.ct_eq(&digest);
        }
        ok.into()
    }

    fn mac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        mac
    }

    pub fn issue_stream_token(&self, job_id: &str, expires: i64) -> String {
        let message = format!("{job_id}.{expires}");
        let tag = hex::encode(self.mac(&message).finalize().into_bytes());
        format!("{message}.{tag}")
    }

    /// True when `token` was issued for `job_id` and has not expired at `now`.
    pub fn accepts_stream_token(&self, token: &str, job_id: &str, now: i64) -> bool {
        let mut parts = token.rsplitn(2, '.');
        let (Some(tag), Some(message)) = (parts.next(), parts.next()) else { return false };
        let Some((token_job, expires)) = message.rsplit_once('.') else { return false };
        let Ok(expires) = expires.parse::<i64>() else { return false };
        let Ok(tag) = hex::decode(tag) else { return false };
        // verify_slice compares in constant time.
        self.mac(message).verify_slice(&tag).is_ok() && token_job == job_id && now <= expires
    }
}

/// Paths anyone may fetch: the probes and the static dashboard shell (which then asks for a token).
pub(super) fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/healthz" | "/readyz" | "/favicon.ico") || path.starts_with("/assets/")
}

/// The job id of `/v1/jobs/{id}/events`, the only path that takes `?access_token=`.
fn events_job_id(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/jobs/")?.strip_suffix("/events").filter(|id| !id.contains('/'))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Middleware: with tokens configured, everything but the public paths needs one.
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(auth) = &state.auth else { return next.run(request).await };
    let path = request.uri().path();
    if is_public(path) || request.method() == axum::http::Method::OPTIONS {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if bearer.is_some_and(|token| auth.accepts_bearer(token)) {
        return next.run(request).await;
    }
    if let (Some(job_id), Some(token)) =
        (events_job_id(path), request.uri().query().and_then(|q| query_param(q, "access_token")))
    {
        if auth.accepts_stream_token(token, job_id, Utc::now().timestamp()) {
            return next.run(request).await;
        }
    }
    let detail = if bearer.is_some() {
        "the bearer token is not valid"
    } else {
        "this endpoint needs `Authorization: Bearer <token>`"
    };
    ApiError::Unauthorized(detail.to_owned()).into_response()
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_stream_token))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamTokenRequest {
    /// The job whose event stream the token opens.
    pub job_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamToken {
    /// Pass as `?access_token=` on `GET /v1/jobs/{job_id}/events`.
    pub token: String,
    pub job_id: String,
    /// The stream must be opened before this; once open it is not cut when the token expires.
    pub expires_at: DateTime<Utc>,
}

/// Get a short-lived token for one job's event stream.
///
/// For clients that cannot send an `Authorization` header, such as the browser's EventSource.
/// Without API tokens configured the events endpoint is open and the token is not needed.
#[utoipa::path(post, path = "/v1/stream-tokens", tag = "jobs", operation_id = "create_stream_token",
    request_body = StreamTokenRequest,
    responses(
        (status = 201, description = "A token for `?access_token=` on the job's events", body = StreamToken),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_stream_token(
    State(state): State<AppState>,
    Json(request): Json<StreamTokenRequest>,
) -> Result<(axum::http::StatusCode, Json<StreamToken>), ApiError> {
    load_job(&state, &request.job_id).await?;
    let expires = Utc::now().timestamp() + STREAM_TOKEN_TTL_SECS;
    // Without configured tokens the stream is open anyway; a throwaway key keeps the shape.
    let token = match &state.auth {
        Some(auth) => auth.issue_stream_token(&request.job_id, expires),
        None => Auth { digests: Vec::new(), key: rand::random() }.issue_stream_token(&request.job_id, expires),
    };
    let expires_at = DateTime::from_timestamp(expires, 0).unwrap_or_else(Utc::now);
    Ok((axum::http::StatusCode::CREATED, Json(StreamToken { token, job_id: request.job_id, expires_at })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_matched_exactly() {
        let auth = Auth::new(&["alpha".into(), "beta-token".into()]).unwrap();
        assert!(auth.accepts_bearer("alpha"));
        assert!(auth.accepts_bearer("beta-token"));
        assert!(!auth.accepts_bearer("alph"));
        assert!(!auth.accepts_bearer("alphaa"));
        assert!(!auth.accepts_bearer(""));
        assert!(Auth::new(&[]).is_none());
    }

    #[test]
    fn stream_tokens_are_bound_to_a_job_and_expire() {
        let auth = Auth::new(&["t".into()]).unwrap();
        let token = auth.issue_stream_token("job-1", 1_000);
        assert!(auth.accepts_stream_token(&token, "job-1", 999));
        assert!(auth.accepts_stream_token(&token, "job-1", 1_000));
        assert!(!auth.accepts_stream_token(&token, "job-1", 1_001), "expired");
        assert!(!auth.accepts_stream_token(&token, "job-2", 999), "another job");
        let forged = token.replace(".1000.", ".9999.");
        assert!(!auth.accepts_stream_token(&forged, "job-1", 999), "a changed expiry breaks the MAC");
        let other = Auth::new(&["t".into()]).unwrap();
        assert!(!other.accepts_stream_token(&token, "job-1", 999), "another key");
        assert!(!auth.accepts_stream_token("garbage", "job-1", 0));
    }

    #[test]
    fn public_paths_and_the_events_path() {
        assert!(is_public("/") && is_public("/healthz") && is_public("/readyz") && is_public("/assets/app.js"));
        assert!(!is_public("/metrics") && !is_public("/v1/jobs") && !is_public("/openapi.json"));
        assert_eq!(events_job_id("/v1/jobs/abc/events"), Some("abc"));
        assert_eq!(events_job_id("/v1/jobs/abc/cancel"), None);
        assert_eq!(events_job_id("/v1/jobs/a/b/events"), None);
        assert_eq!(query_param("last_event_id=3&access_token=x.y.z", "access_token"), Some("x.y.z"));
    }
}
