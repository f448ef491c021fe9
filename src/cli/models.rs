//! `tanuki models summary SPEC.json`: the model a job spec builds, as Keras's
//! `model.summary(show_trainable=True)`, with what each phase trains.

use std::path::PathBuf;

use reqwest::Method;

use super::client::Client;
use super::error::CliError;
use super::jobs::read_json;
use super::output::{self, items, text, Output};

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Layers, output shapes, parameters, and which are trainable in each phase.
    Summary { spec: PathBuf },
}

pub async fn run(client: &Client, out: &Output, command: ModelsCommand) -> Result<(), CliError> {
    let ModelsCommand::Summary { spec } = command;
    let spec = read_json(&spec).await?;
    // A whole job spec will do: the summary needs its model, input and phases.
    let mut body = serde_json::Map::new();
    for key in ["model", "input", "phases"] {
        if let Some(value) = spec.get(key) {
            body.insert(key.to_owned(), value.clone());
        }
    }
    let spec = if body.is_empty() { spec } else { serde_json::Value::Object(body) };
    let summary = client.json(client.request(Method::POST, "/v1/models/summary").json(&spec)).await?;
    out.value(&summary, |summary| {
        let phases: Vec<String> = items(&summary["phases"]).map(|p| text(&p["name"])).collect();
        let mut headers = vec!["LAYER", "TYPE", "OUTPUT SHAPE", "PARAMS"];
        headers.extend(phases.iter().map(String::as_str));
        let rows = items(&summary["layers"]).map(|layer| {
            let mut row = vec![
                text(&layer["name"]),
                text(&layer["type"]),
                layer["output_shape"].to_string(),
                layer["params"].to_string(),
            ];
            row.extend(items(&layer["trainable"]).map(|t| if t == true { "Y" } else { "N" }.to_owned()));
            row
        });
        let mut lines = vec![output::table(&headers, rows), format!("total params: {}", summary["total_params"])];
        for phase in items(&summary["phases"]) {
            lines.push(format!(
                "phase {}: {} trainable, {} non-trainable",
                text(&phase["name"]),
                phase["trainable_params"],
                phase["non_trainable_params"]
            ));
        }
        lines.join("\n")
    })
}
