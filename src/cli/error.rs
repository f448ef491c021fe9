//! What can go wrong in the command-line client, each shown as one or two plain lines (never a
//! backtrace) with its own exit status.

use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server refused the request: its problem+json, or what it sent instead.
    #[error("{}", render_problem(*.status, .problem))]
    Server { status: u16, problem: Value },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach {url}: {cause}")]
    Connection { url: String, cause: String },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The command line or a local file is wrong.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
    /// A followed job ended other than `succeeded`.
    #[error("job {id} {state}{}", .error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    JobDidNotSucceed { id: String, state: String, error: Option<String> },
}

impl CliError {
    pub fn connection(url: &str, error: reqwest::Error) -> Self {
        // reqwest's message alone is "error sending request"; the cause says why.
        let mut cause = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            cause = format!("{cause}: {inner}");
            source = inner.source();
        }
        Self::Connection { url: url.to_owned(), cause }
    }

    pub fn file(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::File { path: path.display().to_string(), source }
    }

    /// An error answer, read whole.
    pub async fn from_answer(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let problem = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self::Server { status, problem }
    }

    /// 1 for a job that failed or was canceled, 2 for a request the server refused or a wrong
    /// command line, 3 for a server that could not be reached or answered nonsense.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::JobDidNotSucceed { .. } => ExitCode::from(1),
            CliError::Server { .. } | CliError::Usage(_) | CliError::File { .. } => ExitCode::from(2),
            CliError::Connection { .. } | CliError::Protocol(_) => ExitCode::from(3),
        }
    }
}

/// `422 Unprocessable Entity: phases[0].epochs: must be at least 1 (field phases[0].epochs)`.
fn render_problem(status: u16, problem: &Value) -> String {
    let title = problem["title"].as_str().unwrap_or("error");
    let mut line = format!("{status} {title}");
    match problem["detail"].as_str() {
        Some(detail) => line.push_str(&format!(": {detail}")),
        None if problem.is_string() => line.push_str(&format!(": {}", problem.as_str().unwrap_or_default())),
        None => {}
    }
    if let Some(field) = problem["field"].as_str() {
        line.push_str(&format!(" (field `{field}`)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_problem_shows_its_title_detail_and_field() {
        let error = CliError::Server {
            status: 422,
            problem: json!({"title": "Unprocessable Entity", "detail": "must be at least 1", "field": "phases[0].epochs"}),
        };
        assert_eq!(error.to_string(), "422 Unprocessable Entity: must be at least 1 (field `phases[0].epochs`)");
        let error = CliError::Server { status: 502, problem: json!("Bad Gateway") };
        assert_eq!(error.to_string(), "502 error: Bad Gateway");
    }
}
