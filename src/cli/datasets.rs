//! `tanuki datasets …`: upload a folder or an archive, list, show, delete.

use std::path::PathBuf;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::archive;
use super::client::Client;
use super::error::CliError;
use super::output::{self, items, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum DatasetsCommand {
    /// Upload a folder of class folders (sent as a tar, streamed) or a zip/tar/tar.gz archive.
    Upload {
        path: PathBuf,
        /// A name for people; defaults to the folder's name, or the archive's without its suffix.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the datasets, newest first.
    List,
    /// One dataset: its classes, counts and skipped files.
    Show { id: String },
    /// Delete a dataset (refused while a queued or running job uses it).
    Delete { id: String },
}

pub async fn run(client: &Client, out: &Output, command: DatasetsCommand) -> Result<(), CliError> {
    match command {
        DatasetsCommand::Upload { path, name } => {
            let name = name.unwrap_or_else(|| default_name(&path));
            let dataset = upload(client, out, &path, &name).await?;
            out.value(&dataset, print_dataset)
        }
        DatasetsCommand::List => {
            let list = client.get("/v1/datasets").await?;
            out.value(&list, |list| {
                output::table(
                    &["ID", "NAME", "IMAGES", "CLASSES", "CREATED"],
                    items(&list["datasets"]).map(|d| {
                        vec![
                            text(&d["id"]),
                            text(&d["name"]),
                            d["image_count"].to_string(),
                            d["classes"].as_array().map_or(0, Vec::len).to_string(),
                            text(&d["created_at"]),
                        ]
                    }),
                )
            })
        }
        DatasetsCommand::Show { id } => {
            let dataset = client.get(&format!("/v1/datasets/{}", output::segment(&id))).await?;
            out.value(&dataset, print_dataset)
        }
        DatasetsCommand::Delete { id } => {
            client.json(client.request(Method::DELETE, &format!("/v1/datasets/{}", output::segment(&id)))).await?;
            out.line(&format!("deleted dataset {id}"));
            Ok(())
        }
    }
}

/// The folder's name, or the archive's without its archive suffix (`cats.tar.gz` is `cats`).
fn default_name(path: &std::path::Path) -> String {
    let name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name = if path.is_dir() {
        name.as_str()
    } else {
        [".tar.gz", ".tgz", ".tar", ".zip"].iter().find_map(|suffix| name.strip_suffix(suffix)).unwrap_or(name.as_str())
    };
    if name.trim().is_empty() {
        "dataset".to_owned()
    } else {
        name.to_owned()
    }
}

/// Streams `path` to the server with a progress bar; returns the stored dataset.
async fn upload(client: &Client, out: &Output, path: &std::path::Path, name: &str) -> Result<Value, CliError> {
    let body = archive::body_of(path).await?;
    let bar = out.bytes_bar(body.size, &format!("uploading {}", path.display()));
    let counted = {
        let bar = bar.clone();
        body.stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                bar.inc(chunk.len() as u64);
            }
        })
    };
    let mut request = client
        .request(Method::POST, "/v1/datasets")
        .query(&[("name", name)])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(counted));
    if body.exact {
        request = request.header(reqwest::header::CONTENT_LENGTH, body.size);
    }
    let result = client.json(request).await;
    bar.finish_and_clear();
    result
}

fn print_dataset(dataset: &Value) -> String {
    let mut lines = vec![
        format!("dataset {} ({})", text(&dataset["id"]), text(&dataset["name"])),
        format!("{} images, {} bytes", dataset["image_count"], dataset["size_bytes"]),
    ];
    for class in items(&dataset["classes"]) {
        lines.push(format!("  {:<24} {}", text(&class["name"]), class["images"]));
    }
    let skipped = dataset["skipped"].as_u64().unwrap_or(0);
    if skipped > 0 {
        lines.push(format!("skipped {skipped} files:"));
        for file in items(&dataset["skipped_examples"]) {
            lines.push(format!("  {}: {}", text(&file["path"]), text(&file["reason"])));
        }
    }
    lines.join("\n")
}
