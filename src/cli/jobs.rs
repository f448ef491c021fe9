//! `tanuki jobs …`: submit (and follow), list, show, cancel, follow, fetch weights, predict.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::client::Client;
use super::error::CliError;
use super::follow::follow;
use super::output::{self, items, segment, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Submit a job spec (JSON). Its `dataset_id` may be a dataset's name as well as its id.
    Submit {
        spec: PathBuf,
        /// Follow the job to its end; the exit status says whether it succeeded.
        #[arg(long)]
        follow: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (`queued`, `running`, `succeeded`, `failed`, `canceled`).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One job: state, phase, metrics, error.
    Show { id: String },
    /// Cancel a job (a running one stops at its next batch).
    Cancel { id: String },
    /// Follow a job's progress to its end: exit status 0 when it succeeds, 1 when it fails or is
    /// canceled.
    Follow { id: String },
    /// Download the weights the job ended with (safetensors).
    Weights {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Class probabilities of images, from the job's best checkpoint (or `--checkpoint`).
    Predict {
        id: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long)]
        checkpoint: Option<String>,
    },
}

pub async fn run(client: &Client, out: &Output, command: JobsCommand) -> Result<(), CliError> {
    match command {
        JobsCommand::Submit { spec, follow: and_follow } => {
            let mut spec = read_json(&spec).await?;
            resolve_dataset_names(client, &mut spec).await?;
            let job = client.json(client.request(Method::POST, "/v1/jobs").json(&spec)).await?;
            let id = text(&job["id"]);
            if and_follow {
                out.line(&format!("job {id} queued"));
                follow_to_end(client, out, &id).await
            } else {
                out.value(&job, print_job)
            }
        }
        JobsCommand::List { state, limit } => {
            let mut request = client.request(Method::GET, "/v1/jobs").query(&[("limit", limit.to_string())]);
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            let list = client.json(request).await?;
            out.value(&list, |list| {
                output::table(
                    &["ID", "NAME", "STATE", "PHASE"],
                    items(&list["jobs"]).map(|j| {
                        let phase = j["phase"]
                            .as_object()
                            .map_or(String::new(), |p| format!("{} {}/{}", text(&p["name"]), p["epoch"], p["epochs"]));
                        vec![text(&j["id"]), j["name"].as_str().unwrap_or("").to_owned(), text(&j["state"]), phase]
                    }),
                )
            })
        }
        JobsCommand::Show { id } => {
            let job = client.get(&format!("/v1/jobs/{}", segment(&id))).await?;
            out.value(&job, print_job)
        }
        JobsCommand::Cancel { id } => {
            let path = format!("/v1/jobs/{}/cancel", segment(&id));
            let job = client.json(client.request(Method::POST, &path)).await?;
            out.value(&job, |j| format!("job {} {}", text(&j["id"]), text(&j["state"])))
        }
        JobsCommand::Follow { id } => follow_to_end(client, out, &id).await,
        JobsCommand::Weights { id, output } => {
            let path = format!("/v1/jobs/{}/weights", segment(&id));
            let response = client.send(client.request(Method::GET, &path)).await?;
            let written = save(response, &output).await?;
            out.line(&format!("wrote {} ({written} bytes)", output.display()));
            Ok(())
        }
        JobsCommand::Predict { id, images, checkpoint } => {
            let path = format!("/v1/jobs/{}/predict", segment(&id));
            let mut results = Vec::new();
            for image in &images {
                let bytes = tokio::fs::read(image).await.map_err(|e| CliError::file(image, e))?;
                let mut request = client.request(Method::POST, &path).body(bytes);
                if let Some(checkpoint) = &checkpoint {
                    request = request.query(&[("checkpoint", checkpoint)]);
                }
                let answer = client.json(request).await?;
                results.push(serde_json::json!({"file": image.display().to_string(), "answer": answer}));
            }
            out.value(&Value::Array(results), |results| {
                let mut rows = Vec::new();
                for result in items(results) {
                    for p in items(&result["answer"]["predictions"]) {
                        let probability = p["probability"].as_f64().unwrap_or(0.0);
                        rows.push(vec![text(&result["file"]), text(&p["class"]), format!("{probability:.4}")]);
                    }
                }
                output::table(&["IMAGE", "CLASS", "PROBABILITY"], rows)
            })
        }
    }
}

/// Follows the job; an end other than `succeeded` is an error (a non-zero exit).
async fn follow_to_end(client: &Client, out: &Output, id: &str) -> Result<(), CliError> {
    let end = follow(client, out, id).await?;
    match end["state"].as_str() {
        Some("succeeded") => Ok(()),
        state => Err(CliError::JobDidNotSucceed {
            id: id.to_owned(),
            state: state.unwrap_or("ended").to_owned(),
            error: end["error"].as_str().map(str::to_owned),
        }),
    }
}

pub async fn read_json(path: &Path) -> Result<Value, CliError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| CliError::file(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))
}

/// A `dataset_id` (or `validation_dataset_id`) that is no dataset's id but exactly one
/// dataset's name is replaced by that dataset's id.
async fn resolve_dataset_names(client: &Client, spec: &mut Value) -> Result<(), CliError> {
    let fields = ["dataset_id", "validation_dataset_id"];
    if !fields.iter().any(|f| spec[f].is_string()) {
        return Ok(());
    }
    let list = client.get("/v1/datasets").await?;
    let datasets = list["datasets"].as_array().cloned().unwrap_or_default();
    for field in fields {
        let Some(given) = spec[field].as_str().map(str::to_owned) else { continue };
        if datasets.iter().any(|d| d["id"] == given.as_str()) {
            continue;
        }
        let named: Vec<&Value> = datasets.iter().filter(|d| d["name"] == given.as_str()).collect();
        match named.as_slice() {
            [one] => spec[field] = one["id"].clone(),
            [] => {} // The server says there is no such dataset, naming the field.
            _ => {
                return Err(CliError::Usage(format!(
                    "`{field}`: {} datasets are named {given:?}; use an id",
                    named.len()
                )))
            }
        }
    }
    Ok(())
}

/// Streams a download to `path` (through `PATH.partial`, renamed when complete, removed if not).
async fn save(response: reqwest::Response, path: &Path) -> Result<u64, CliError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    // create_new: an unrelated file that happens to have the name is neither overwritten nor
    // removed.
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .await
        .map_err(|e| CliError::file(&partial, e))?;
    let written = write_download(response, file, &partial, path).await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written
}

async fn write_download(
    response: reqwest::Response,
    mut file: tokio::fs::File,
    partial: &Path,
    path: &Path,
) -> Result<u64, CliError> {
    let mut stream = response.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| CliError::Protocol(format!("the download broke off: {error}")))?;
        file.write_all(&chunk).await.map_err(|e| CliError::file(partial, e))?;
        written += chunk.len() as u64;
    }
    file.sync_all().await.map_err(|e| CliError::file(partial, e))?;
    tokio::fs::rename(partial, path).await.map_err(|e| CliError::file(path, e))?;
    Ok(written)
}

fn print_job(job: &Value) -> String {
    let mut lines = vec![format!("job {} ({})", text(&job["id"]), text(&job["state"]))];
    if let Some(name) = job["name"].as_str() {
        lines.push(format!("name: {name}"));
    }
    lines.push(format!("dataset: {}", text(&job["dataset_id"])));
    if let Some(phase) = job["phase"].as_object() {
        lines.push(format!("phase: {} epoch {}/{}", text(&phase["name"]), phase["epoch"], phase["epochs"]));
    }
    if job["test_metrics"].is_object() {
        let m = &job["test_metrics"];
        lines.push(format!("test: loss {} accuracy {}", m["loss"], m["accuracy"]));
    }
    if let Some(error) = job["error"].as_str() {
        lines.push(format!("error ({}): {error}", text(&job["error_code"])));
    }
    if let Some(download) = job["final_weights"]["download"].as_str() {
        lines.push(format!("weights: {download} ({} bytes)", job["final_weights"]["size"]));
    }
    lines.join("\n")
}
