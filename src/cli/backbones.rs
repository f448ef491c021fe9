//! `tanuki backbones …`: upload pretrained weights, list them.

use std::path::PathBuf;

use reqwest::Method;

use super::archive;
use super::client::Client;
use super::error::CliError;
use super::output::{self, items, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum BackbonesCommand {
    /// Upload a safetensors weights file for an architecture (checked against it by the server).
    Upload {
        file: PathBuf,
        /// `mobilenet_v2`, `efficientnet_lite0`, `xception` or `small_cnn`.
        #[arg(long)]
        architecture: String,
        /// Width multiplier (MobileNetV2 only).
        #[arg(long)]
        alpha: Option<f32>,
        /// How the tensors are named: `keras`, `torchvision`, `efficientnet_pytorch` or `tanuki`.
        #[arg(long)]
        format: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the uploaded weights.
    List,
}

pub async fn run(client: &Client, out: &Output, command: BackbonesCommand) -> Result<(), CliError> {
    match command {
        BackbonesCommand::Upload { file, architecture, alpha, format, name } => {
            let body = archive::body_of(&file).await?;
            if !body.exact {
                return Err(CliError::Usage(format!("{}: a weights upload is one file", file.display())));
            }
            let mut query = vec![("architecture", architecture), ("format", format)];
            if let Some(alpha) = alpha {
                query.push(("alpha", alpha.to_string()));
            }
            if let Some(name) = name {
                query.push(("name", name));
            }
            let request = client
                .request(Method::POST, "/v1/backbones")
                .query(&query)
                .header(reqwest::header::CONTENT_LENGTH, body.size)
                .body(reqwest::Body::wrap_stream(body.stream));
            let weights = client.json(request).await?;
            out.value(&weights, |w| {
                format!(
                    "backbone {} ({}): {} {} tensors, {} parameters",
                    text(&w["id"]),
                    text(&w["name"]),
                    text(&w["architecture"]),
                    w["tensors"],
                    w["params"]
                )
            })
        }
        BackbonesCommand::List => {
            let list = client.get("/v1/backbones").await?;
            out.value(&list, |list| {
                output::table(
                    &["ID", "NAME", "ARCHITECTURE", "FORMAT", "PARAMS"],
                    items(&list["weights"]).map(|b| {
                        vec![
                            text(&b["id"]),
                            text(&b["name"]),
                            text(&b["architecture"]),
                            text(&b["format"]),
                            b["params"].to_string(),
                        ]
                    }),
                )
            })
        }
    }
}
