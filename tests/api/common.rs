//! A real server on a random port with its own SQLite file and data directory, a real HTTP
//! client, archives built from real photos, and an SSE reader.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tanuki::config::Config;

/// Whether `../shared/data` (the photos) and `../shared/weights` are here. When they are not, a
/// test that needs them is skipped, saying so, unless `TANUKI_REQUIRE_SHARED_DATA=1` (which
/// `.ci/run` sets) makes their absence a failure.
pub fn shared_data_present() -> bool {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let present = shared_data().is_dir() && shared.join("weights").is_dir();
    if !present {
        let required = std::env::var("TANUKI_REQUIRE_SHARED_DATA").is_ok_and(|v| v == "1");
        assert!(!required, "{} is missing and TANUKI_REQUIRE_SHARED_DATA=1", shared.display());
        eprintln!("skipping: this test needs {}/data and {}/weights", shared.display(), shared.display());
    }
    present
}

/// First line of a test that reads `../shared`: returns early when it is absent (see
/// [`shared_data_present`]).
macro_rules! require_shared_data {
    () => {
        if !crate::common::shared_data_present() {
            return;
        }
    };
}
pub(crate) use require_shared_data;

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<tanuki::app::Running>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.workers = 1;
        config.sse_keepalive_secs = 1;
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let running = tanuki::app::start(config, listener).await.expect("server starts");
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().expect("client");
        Self { base, client, dir, running: Some(running) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        read(response).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.expect("POST");
        read(response).await
    }

    pub async fn upload(&self, name: &str, archive: Vec<u8>, content_type: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(&format!("/v1/datasets?name={name}")))
            .header("content-type", content_type)
            .body(archive)
            .send()
            .await
            .expect("upload");
        read(response).await
    }

    /// Polls until the job is in a final state, or panics after `timeout`.
    pub async fn wait_for_end(&self, job_id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{job_id}")).await;
            assert_eq!(status, 200, "{job}");
            if ["succeeded", "failed", "canceled"].contains(&job["state"].as_str().unwrap_or("")) {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job did not end in time: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean shutdown");
        }
    }
}

/// Status and body (JSON, or a JSON string of the text), checking problem+json on errors.
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = response.text().await.expect("body");
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "error body must be problem+json: {status} {text}");
        // 507 is the disk's state, not the input's fault (only the full-disk tests fill one).
        assert!(status < 500 || status == 507, "no client input may cause a 5xx: {status} {text}");
    }
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cats_and_dogs_filtered")
}

/// `(archive path, bytes)` of the first `per_class` real photos of each class.
pub fn real_photos(split: &str, per_class: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for class in ["cats", "dogs"] {
        let dir = shared_data().join(split).join(class);
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).expect("shared data present").map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for name in names.into_iter().take(per_class) {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            files.push((format!("{class}/{}", name.to_string_lossy()), bytes));
        }
    }
    files
}

pub fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (path, bytes) in files {
        writer.start_file(path.as_str(), options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

pub fn tar_gz_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Uploads `per_class` real photos of each class and returns the dataset id.
pub async fn upload_photos(server: &TestServer, per_class: usize) -> String {
    let (status, body) = server.upload("photos", zip_of(&real_photos("train", per_class)), "application/zip").await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The guide's two-phase recipe, scaled down to train in seconds on CPU.
pub fn small_spec(dataset_id: &str) -> Value {
    json!({
        "name": "cats-vs-dogs",
        "dataset_id": dataset_id,
        "split": {"validation": 0.25, "test": 0.15, "seed": 1337},
        "input": {"height": 32, "width": 32, "scale": 0.00784313725490196, "offset": -1.0},
        "augmentation": {"horizontal_flip": true, "rotation": 0.1},
        "model": {
            "backbone": {"architecture": "small_cnn", "weights": null, "widths": [8, 16]},
            "head": {"pooling": "avg", "dropout": 0.2, "units": 1}
        },
        "batch_size": 8,
        "log_every_steps": 1,
        "phases": [
            {"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 2},
            {"name": "fine_tune", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.00001}, "epochs": 1}
        ]
    })
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// Reads an SSE response until the stream ends or `stop` says so; comments (keep-alives) are
/// skipped.
pub async fn read_sse(response: reqwest::Response, mut stop: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
    use futures::StreamExt;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if data.is_empty() && id.is_none() {
                continue; // a keep-alive comment
            }
            let parsed = SseEvent { id, event, data: serde_json::from_str(&data).expect("data is JSON") };
            let done = stop(&parsed);
            events.push(parsed);
            if done {
                return events;
            }
        }
    }
    events
}
