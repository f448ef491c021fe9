//! How the client prints: text for people (tables, progress bars on a terminal, plain lines
//! otherwise) or, with `--json`, the server's JSON as it came.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::error::CliError;

/// Where and how results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: JSON documents (one per line for event streams), nothing else on stdout.
    pub json: bool,
    /// Standard output is a terminal: progress bars are drawn.
    pub terminal: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json, terminal: !json && std::io::stdout().is_terminal() }
    }

    /// Prints a result: as JSON, or as `render` makes it for people.
    pub fn value(&self, value: &Value, render: impl FnOnce(&Value) -> String) -> Result<(), CliError> {
        if self.json {
            let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Protocol(e.to_string()))?;
            println!("{text}");
        } else {
            println!("{}", render(value));
        }
        Ok(())
    }

    /// A line for people (not in `--json` mode).
    pub fn line(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    /// A byte-count progress bar with rate, drawn only on a terminal.
    pub fn bytes_bar(&self, total: u64, message: &str) -> ProgressBar {
        if !self.terminal {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(message.to_owned());
        bar
    }
}

/// Columns padded to their widest cell.
pub fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// The elements of a JSON array (none for anything else).
pub fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// A JSON string's text, or the value as JSON (`null`, numbers).
pub fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// An id made safe as one path segment (percent-encoding all but unreserved characters).
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_ids_are_one_segment() {
        let rows = vec![vec!["a".to_owned(), "long value".to_owned()], vec!["bbb".to_owned(), "x".to_owned()]];
        assert_eq!(table(&["ID", "NAME"], rows), "ID   NAME\na    long value\nbbb  x");
        assert_eq!(segment("0192-ab/../x y"), "0192-ab%2F..%2Fx%20y");
    }
}
