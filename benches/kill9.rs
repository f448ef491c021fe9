//! Fault injection (not part of CI): the real server binary is killed with SIGKILL at random
//! points of a three-phase training job, 20 times, and restarted on the same data directory each
//! time. Then: the job must end `succeeded`; its stored event ids must run 1, 2, 3, … with no gap
//! or repeat; every listed checkpoint and the final weights must download, match their sha256 and
//! load as safetensors; `PRAGMA integrity_check` must be `ok`. Prints the figures.
//!
//! First the same job runs once without kills: the baseline, and the number of training steps
//! the kill points are drawn from (so that they land across all three phases).
//!
//! `cargo bench --bench kill9` (env: `KILL9_KILLS`, default 20; `KILL9_SEED`, default 1).
//! Reads photos from `../shared/data/cats_and_dogs_filtered`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[path = "support/photos.rs"]
mod photos;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The guide's workflow in three phases: head on a frozen base, the top block, then everything.
fn spec(dataset_id: &str) -> Value {
    json!({
        "name": "kill9",
        "dataset_id": dataset_id,
        "split": {"validation": 0.2, "test": 0.1, "seed": 7},
        "input": {"height": 96, "width": 96, "scale": 0.00784313725490196, "offset": -1.0},
        "augmentation": {"horizontal_flip": true},
        "model": {
            "backbone": {"architecture": "small_cnn", "weights": null, "widths": [16, 32, 64]},
            "head": {"pooling": "avg", "dropout": 0.2, "units": 1}
        },
        "batch_size": 16,
        "log_every_steps": 1,
        "phases": [
            {"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 4},
            {"name": "top", "trainable": ["backbone.block3", "head"], "optimizer": {"type": "adam", "learning_rate": 0.0005}, "epochs": 4},
            {"name": "all", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.00005}, "epochs": 4}
        ]
    })
}

/// The server binary on `addr` with its data in `data`.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(data: &Path, addr: &str, client: &reqwest::Client) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tanuki"))
            .env("TANUKI_ADDR", addr)
            .env("TANUKI_DATA_DIR", data)
            .env("TANUKI_WORKERS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server starts");
        let server = Self { child, base: format!("http://{addr}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(format!("{}/readyz", server.base)).send().await.ok().map(|r| r.status().as_u16()) != Some(200)
        {
            assert!(Instant::now() < deadline, "the server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Value {
        let response = client.get(format!("{}{path}", self.base)).send().await.expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("JSON")
    }
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Submits the job and returns its id.
async fn submit(server: &Server, client: &reqwest::Client) -> String {
    let response = client
        .post(format!("{}/v1/datasets?name=kill9", server.base))
        .header("content-type", "application/zip")
        .body(photos::photos_zip(200))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let dataset: Value = response.json().await.unwrap();
    let response = client
        .post(format!("{}/v1/jobs", server.base))
        .json(&spec(dataset["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let job: Value = response.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

fn ended(job: &Value) -> bool {
    ["succeeded", "failed", "canceled"].contains(&job["state"].as_str().unwrap_or(""))
}

async fn wait_for_end(server: &Server, client: &reqwest::Client, job_id: &str) -> Value {
    loop {
        let job = server.get(client, &format!("/v1/jobs/{job_id}")).await;
        if ended(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the job was, for the report: `phase/epoch` or its state.
fn position(job: &Value) -> String {
    match job["phase"].as_object() {
        Some(phase) => format!("{}/{}", phase["name"].as_str().unwrap_or("?"), phase["epoch"]),
        None => job["state"].as_str().unwrap_or("?").to_owned(),
    }
}

/// Checks what a finished job left; returns (events, checkpoints, bytes downloaded).
async fn verify(server: &Server, client: &reqwest::Client, job_id: &str) -> (usize, usize, u64) {
    let history = server.get(client, &format!("/v1/jobs/{job_id}/metrics")).await;
    let events = history["events"].as_array().unwrap();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["id"].as_u64(), Some(i as u64 + 1), "event ids must be contiguous from 1");
    }
    let checkpoints = server.get(client, &format!("/v1/jobs/{job_id}/checkpoints")).await;
    let checkpoints = checkpoints["checkpoints"].as_array().unwrap().clone();
    let job = server.get(client, &format!("/v1/jobs/{job_id}")).await;
    let mut downloads: Vec<(String, String)> = checkpoints
        .iter()
        .map(|c| (c["download"].as_str().unwrap().to_owned(), c["sha256"].as_str().unwrap().to_owned()))
        .collect();
    let final_weights = &job["final_weights"];
    downloads.push((
        final_weights["download"].as_str().unwrap().to_owned(),
        final_weights["sha256"].as_str().unwrap().to_owned(),
    ));
    let mut bytes_total = 0;
    for (url, sha256) in downloads {
        let response = client.get(format!("{}{url}", server.base)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha256, "{url}: sha256");
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).expect("loads");
        assert!(!tensors.is_empty(), "{url}: no tensors");
        bytes_total += bytes.len() as u64;
    }
    (events.len(), checkpoints.len(), bytes_total)
}

async fn integrity_check(data: &Path) -> String {
    let url = format!("sqlite://{}", data.join("tanuki.sqlite3").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
    pool.close().await;
    check
}

#[tokio::main]
async fn main() {
    let kills = env_u64("KILL9_KILLS", 20);
    let seed = env_u64("KILL9_SEED", 1);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();

    // The baseline: the same job, never killed.
    let baseline_dir = tempfile::tempdir().unwrap();
    let server = Server::start(baseline_dir.path(), &free_addr(), &client).await;
    let job_id = submit(&server, &client).await;
    let started = Instant::now();
    let job = wait_for_end(&server, &client, &job_id).await;
    let baseline = started.elapsed();
    assert_eq!(job["state"], "succeeded", "baseline: {job}");
    let baseline_test = job["test_metrics"].clone();
    let (baseline_events, baseline_checkpoints, _) = verify(&server, &client, &job_id).await;
    let history = server.get(&client, &format!("/v1/jobs/{job_id}/metrics")).await;
    let baseline_steps = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["global_step"].as_u64())
        .max()
        .expect("step events");
    server.kill9();
    println!(
        "baseline: {:.1} s, {baseline_steps} steps, {baseline_events} events, {baseline_checkpoints} checkpoints kept",
        baseline.as_secs_f64()
    );

    // The same job, killed `kills` times.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let addr = free_addr();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Kill points spread over the whole job: a random training step each (sorted), then a random
    // moment up to 300 ms after the job reached it (between steps, in an evaluation, while a
    // checkpoint is written, ...). A resumed job repeats the steps since its last checkpoint.
    let mut targets: Vec<u64> = (0..kills).map(|_| rng.gen_range(1..=baseline_steps)).collect();
    targets.sort_unstable();
    let mut server = Server::start(data, &addr, &client).await;
    let job_id = submit(&server, &client).await;
    let started = Instant::now();
    let mut restarting = Duration::ZERO;
    let mut kills_done = 0;
    let mut at_kill = Vec::new();
    for target in targets {
        let job = loop {
            let job = server.get(&client, &format!("/v1/jobs/{job_id}")).await;
            if ended(&job) || job["latest_metrics"]["global_step"].as_u64().is_some_and(|s| s >= target) {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if ended(&job) {
            println!("the job ended after {kills_done} kills; stopping early");
            break;
        }
        tokio::time::sleep(rng.gen_range(Duration::ZERO..Duration::from_millis(300))).await;
        at_kill.push(format!("{} (step {target})", position(&job)));
        server.kill9();
        kills_done += 1;
        let restart = Instant::now();
        server = Server::start(data, &addr, &client).await;
        restarting += restart.elapsed();
    }
    let job = wait_for_end(&server, &client, &job_id).await;
    let killed = started.elapsed();
    assert_eq!(job["state"], "succeeded", "{job}");
    let (events, checkpoints, downloaded) = verify(&server, &client, &job_id).await;
    server.kill9();
    let integrity = integrity_check(data).await;
    assert_eq!(integrity, "ok");

    println!("kills: {kills_done} (seed {seed}; each at a random one of {baseline_steps} steps, then 0 .. 300 ms)");
    println!("  where: {}", at_kill.join(", "));
    println!(
        "job: succeeded after {} attempts; {:.1} s wall ({:.2}x the baseline), of which {:.1} s restarting",
        job["attempts"],
        killed.as_secs_f64(),
        killed.as_secs_f64() / baseline.as_secs_f64(),
        restarting.as_secs_f64()
    );
    println!("events: {events}, ids 1..={events} contiguous (baseline {baseline_events})");
    println!(
        "checkpoints: {checkpoints} listed (baseline {baseline_checkpoints}); all {} files downloaded ({downloaded} bytes), sha256 matched, loaded",
        checkpoints + 1
    );
    println!("test metrics: {} (baseline {baseline_test})", job["test_metrics"]);
    println!("PRAGMA integrity_check: {integrity}");
}
