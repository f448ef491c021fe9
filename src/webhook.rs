//! A job's webhook: the URL its end is posted to, and the secret that signs each delivery as
//! Standard Webhooks define it (<https://www.standardwebhooks.com>): the headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//!
//! A leaf on purpose: the job spec (in `train`) carries it, `jobs` delivers it, `http` shows
//! its URL; none of them may be imported from here.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// Where a job's end is posted, and the key that signs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// An absolute `http` or `https` URL; it gets a POST when the job ends (succeeded, failed or
    /// canceled), retried with exponential backoff until it answers 2xx.
    #[schema(value_type = String, format = "uri", max_length = 2048, example = "https://example.com/hooks/tanuki")]
    pub url: WebhookUrl,
    /// `whsec_` followed by the base64 of 24 to 64 random bytes (the HMAC-SHA256 key). Never
    /// shown again: a job's answers give its webhook's URL only.
    #[schema(value_type = String, pattern = "^whsec_[A-Za-z0-9+/]{32,88}={0,2}$",
             example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: WebhookSecret,
}

const MAX_URL_LEN: usize = 2048;

/// An absolute http(s) URL, checked when the spec is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("a webhook URL is at most {MAX_URL_LEN} bytes, this one is {}", text.len()));
        }
        let url = reqwest::Url::parse(&text).map_err(|e| format!("not an absolute URL ({e}): {text:?}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("a webhook URL must be http or https, not {:?}", url.scheme()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("a webhook URL needs a host: {text:?}"));
        }
        Ok(Self(text))
    }
}

impl From<WebhookUrl> for String {
    fn from(url: WebhookUrl) -> String {
        url.0
    }
}

/// The signing key, kept as the text it was given in (so the stored spec reads back the same)
/// and as the bytes it decodes to. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

const SECRET_PREFIX: &str = "whsec_";
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;

impl WebhookSecret {
    /// `v1,<base64 HMAC-SHA256>` over `"<id>.<timestamp>.<body>"`: the `webhook-signature`
    /// header's value for one delivery attempt.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!("a webhook secret starts with {SECRET_PREFIX:?}, then the base64 of its key"));
        };
        let key = BASE64.decode(encoded).map_err(|e| format!("the part after {SECRET_PREFIX:?} is not base64: {e}"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "a webhook secret's key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, this one is {}",
                key.len()
            ));
        }
        Ok(Self { text, key })
    }
}

impl From<WebhookSecret> for String {
    fn from(secret: WebhookSecret) -> String {
        secret.text
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// What a delivery announces: the job reached this final state. Written as `job.<state>` in
/// the body's `type` and stored so in `webhook_messages.event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
pub enum WebhookEventType {
    #[serde(rename = "job.succeeded")]
    #[sqlx(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    #[sqlx(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.canceled")]
    #[sqlx(rename = "job.canceled")]
    JobCanceled,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not yet answered with 2xx; `next_attempt_at` says when it is tried again.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt within the retry window failed; no more are made.
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries (their test vector).
    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        let secret = WebhookSecret::try_from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_secrets_and_urls_that_cannot_work() {
        for (secret, says) in [
            ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"),
            ("whsec_not base64!", "not base64"),
            ("whsec_c2hvcnQ=", "this one is 5"),
        ] {
            let error = WebhookSecret::try_from(secret.to_owned()).unwrap_err();
            assert!(error.contains(says), "{secret}: {error}");
        }
        for (url, says) in [
            ("example.com/hook", "not an absolute URL"),
            ("ftp://example.com/hook", "http or https"),
            ("file:///etc/passwd", "http or https"),
        ] {
            let error = WebhookUrl::try_from(url.to_owned()).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
        assert!(WebhookUrl::try_from("http://127.0.0.1:9/hook?x=1".to_owned()).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let secret = WebhookSecret::try_from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()).unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret(..)");
    }
}
