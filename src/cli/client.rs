//! The HTTP side of the command-line client: the server's address and token, and every answer
//! turned into JSON or a [`CliError`] (a problem+json answer shown as its title, detail and field).

use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use super::error::CliError;

/// Where the server is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The tanuki server to talk to.
    #[arg(long, env = "TANUKI_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// A bearer token, for a server that requires one.
    #[arg(long, env = "TANUKI_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(connection: &Connection) -> Result<Self, CliError> {
        let base = connection.url.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(CliError::Usage(format!("--url must start with http:// or https://, not {base:?}")));
        }
        // No overall timeout: uploads and event streams take as long as they take.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self { http, base, token: connection.token.clone() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path` with the token set.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends the request; a success is returned as it is, an error answer as a [`CliError`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| CliError::connection(&self.base, e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(CliError::from_answer(response).await)
        }
    }

    /// Sends the request and reads the JSON answer (`null` for an empty one).
    pub async fn json(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|e| CliError::connection(&self.base, e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol(format!("the answer is not JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.json(self.request(Method::GET, path)).await
    }
}
