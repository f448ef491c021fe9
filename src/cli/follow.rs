//! `jobs follow`: the job's event stream until its `end` event, with one progress bar per phase
//! on a terminal (plain lines otherwise, JSON lines with `--json`). A broken connection is
//! reconnected with `Last-Event-ID`, so nothing is printed twice or missed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Client;
use super::error::CliError;
use super::output::{segment, text, Output};

/// How long to keep trying to reconnect after the last event or successful connection.
const RECONNECT_FOR: Duration = Duration::from_secs(120);
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// One Server-Sent Event.
struct Message {
    id: Option<i64>,
    event: String,
    data: Value,
}

/// Follows job `id` to its end; returns the `end` event's data.
pub async fn follow(client: &Client, out: &Output, id: &str) -> Result<Value, CliError> {
    let path = format!("/v1/jobs/{}/events", segment(id));
    let mut view = View::new(*out);
    let mut last_id: Option<i64> = None;
    let mut last_progress = Instant::now();
    loop {
        let mut request = client.request(Method::GET, &path).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = last_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        match client.send(request).await {
            Ok(response) => {
                last_progress = Instant::now();
                let mut stream = response.bytes_stream();
                // Bytes, decoded a whole message at a time: a character split across two chunks
                // stays whole.
                let mut buffer: Vec<u8> = Vec::new();
                'read: while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { break };
                    buffer.extend_from_slice(&chunk);
                    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buffer.drain(..end + 2).collect();
                        let Some(message) = parse(&String::from_utf8_lossy(&block)) else { continue };
                        let Some(event_id) = message.id else {
                            // `dropped` or `shutdown`: the server ends the stream; reconnect.
                            break 'read;
                        };
                        if last_id.is_some_and(|last| event_id <= last) {
                            continue;
                        }
                        last_id = Some(event_id);
                        last_progress = Instant::now();
                        view.show(&message);
                        if message.event == "end" {
                            view.finish();
                            return Ok(message.data);
                        }
                    }
                }
            }
            // A refusal (no such job, no token) will not change by retrying; a server that is
            // restarting (503) or unreachable may.
            Err(CliError::Server { status, problem }) if status != 503 && status < 500 => {
                view.finish();
                return Err(CliError::Server { status, problem });
            }
            Err(error) => {
                if last_progress.elapsed() > RECONNECT_FOR {
                    view.finish();
                    return Err(error);
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

fn parse(block: &str) -> Option<Message> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("event:") {
            event = Some(value.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    let data = serde_json::from_str(&data).unwrap_or(Value::Null);
    event.map(|event| Message { id, event, data })
}

/// What the events look like on the screen.
struct View {
    out: Output,
    bars: Option<MultiProgress>,
    /// By phase index: its epochs and bar.
    phases: HashMap<u64, Phase>,
}

struct Phase {
    epochs: u64,
    bar: Option<ProgressBar>,
}

impl View {
    fn new(out: Output) -> Self {
        let bars = out.terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Self { out, bars, phases: HashMap::new() }
    }

    /// A line above the bars (or a plain line).
    fn line(&self, line: String) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => println!("{line}"),
        }
    }

    fn show(&mut self, message: &Message) {
        let data = &message.data;
        if self.out.json {
            println!("{}", json!({"id": message.id, "event": message.event, "data": data}));
            return;
        }
        match message.event.as_str() {
            "state" => self.line(state_line(data)),
            "phase" if data["status"] == "started" => self.phase_started(data),
            "phase" => {
                if let Some(phase) = self.phases.get(&data["phase_index"].as_u64().unwrap_or(0)) {
                    if let Some(bar) = &phase.bar {
                        bar.finish();
                    }
                }
                let mut line = format!("phase {} ended after {} epochs", text(&data["name"]), data["epochs_run"]);
                if data["stopped_early"] == true {
                    line.push_str(" (stopped early)");
                }
                if let Some(epoch) = data["restored_best_epoch"].as_u64() {
                    line.push_str(&format!(", best weights of epoch {epoch} restored"));
                }
                self.line(line);
            }
            "step" => self.step(data),
            "epoch" => {
                let epochs = self.phases.get(&data["phase_index"].as_u64().unwrap_or(0)).map_or(0, |p| p.epochs);
                let mut line = format!(
                    "{} epoch {}/{epochs}: {}",
                    text(&data["phase"]),
                    data["epoch"],
                    metrics("", &data["train"])
                );
                if data["validation"].is_object() {
                    line.push_str(&format!(", {}", metrics("val_", &data["validation"])));
                }
                line.push_str(&format!(" ({:.1} s)", data["seconds"].as_f64().unwrap_or(0.0)));
                self.line(line);
            }
            "end" => {
                let mut line = format!("job {}", text(&data["state"]));
                if data["test"].is_object() {
                    line.push_str(&format!(": test {}", metrics("", &data["test"])));
                }
                if let Some(error) = data["error"].as_str() {
                    line.push_str(&format!(": {error}"));
                }
                self.line(line);
            }
            _ => {}
        }
    }

    fn phase_started(&mut self, data: &Value) {
        let index = data["phase_index"].as_u64().unwrap_or(0);
        let name = text(&data["name"]);
        let epochs = data["epochs"].as_u64().unwrap_or(0);
        let mut line = format!(
            "phase {name}: {epochs} epochs, {} trainable / {} non-trainable parameters, learning rate {}",
            data["trainable_params"], data["non_trainable_params"], data["learning_rate"]
        );
        if let Some(epoch) = data["resumed_from_epoch"].as_u64() {
            line.push_str(&format!(", resumed after epoch {epoch}"));
        }
        self.line(line);
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(epochs.max(1)));
            bar.set_style(
                ProgressStyle::with_template("{prefix} {wide_bar} {msg} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(name.clone());
            bar
        });
        if let Some(old) = self.phases.insert(index, Phase { epochs, bar }) {
            // Started again after an interruption: its old bar goes.
            if let (Some(bars), Some(bar)) = (&self.bars, old.bar) {
                bars.remove(&bar);
            }
        }
    }

    fn step(&self, data: &Value) {
        let Some(phase) = self.phases.get(&data["phase_index"].as_u64().unwrap_or(0)) else { return };
        let Some(bar) = &phase.bar else { return };
        let (epoch, batch, batches) = (
            data["epoch"].as_u64().unwrap_or(1),
            data["batch"].as_u64().unwrap_or(0),
            data["batches"].as_u64().unwrap_or(1).max(1),
        );
        bar.set_length(phase.epochs.max(1) * batches);
        bar.set_position((epoch.saturating_sub(1)) * batches + batch);
        bar.set_message(format!(
            "epoch {epoch}/{} batch {batch}/{batches} {}",
            phase.epochs,
            metrics("", &json!({"loss": data["loss"], "accuracy": data["accuracy"]}))
        ));
    }

    fn finish(&self) {
        for phase in self.phases.values() {
            if let Some(bar) = &phase.bar {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

fn state_line(data: &Value) -> String {
    let state = text(&data["state"]);
    if let Some(attempt) = data["attempt"].as_u64() {
        let mut line = format!("{state} (attempt {attempt})");
        if let Some(from) = data["resumed_from"].as_object() {
            line.push_str(&format!(", resumed from phase {} epoch {}", from["phase_index"], from["epoch"]));
        }
        return line;
    }
    if data["stage"] == "data_ready" {
        return format!(
            "data ready: {} train, {} validation, {} test images",
            data["train_images"], data["validation_images"], data["test_images"]
        );
    }
    match data["reason"].as_str().or(data["error"].as_str()) {
        Some(why) => format!("{state}: {why}"),
        None => state,
    }
}

/// `loss 0.6931 accuracy 0.500`, with a prefix on each name.
fn metrics(prefix: &str, m: &Value) -> String {
    let number = |v: &Value| v.as_f64().map_or_else(|| "nan".to_owned(), |x| format!("{x:.4}"));
    format!("{prefix}loss {} {prefix}accuracy {}", number(&m["loss"]), number(&m["accuracy"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_block_is_parsed_and_a_comment_is_not_a_message() {
        let message = parse("id: 7\nevent: epoch\ndata: {\"epoch\":1}\n\n").unwrap();
        assert_eq!((message.id, message.event.as_str(), message.data["epoch"].as_u64()), (Some(7), "epoch", Some(1)));
        assert!(parse(": keep-alive\n\n").is_none());
        let closed = parse("event: shutdown\ndata: {\"reason\":\"x\",\"last_event_id\":3}\n\n").unwrap();
        assert_eq!(closed.id, None);
    }
}
