//! SSE load test (loopback only, bounded in time and count): one real training job, many
//! concurrent subscribers from the start plus late joiners resuming with Last-Event-ID.
//! Checks that every subscriber gets every event exactly once and in order; prints delivery
//! latency (event `created_at` → receipt) p50/p99 and the process's memory.
//!
//! `cargo bench --bench sse_load` (env: `SSE_SUBSCRIBERS`, default 500; `SSE_LATE`, default 100;
//! `SSE_EPOCHS`, default 400). Reads photos from `../shared/data/cats_and_dogs_filtered`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};

#[path = "support/photos.rs"]
mod photos;
use photos::photos_zip;

const TIME_LIMIT: Duration = Duration::from_secs(240);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_owned()).unwrap_or_default()
    };
    format!("VmRSS {} (peak VmHWM {})", field("VmRSS:"), field("VmHWM:"))
}

/// Reads one subscription to the end; returns (id, receipt time) of each event and the name of
/// a final event without an id, if any.
async fn subscribe(
    client: reqwest::Client,
    url: String,
    last_event_id: Option<i64>,
) -> (Vec<(i64, SystemTime)>, Option<String>) {
    let mut request = client.get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.expect("subscribe");
    assert_eq!(response.status().as_u16(), 200);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut received = Vec::new();
    while let Some(chunk) = stream.next().await {
        let now = SystemTime::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let id = block.lines().find_map(|l| l.strip_prefix("id:")).and_then(|v| v.trim().parse::<i64>().ok());
            let event = block.lines().find_map(|l| l.strip_prefix("event:")).map(|v| v.trim().to_owned());
            match (id, event) {
                (Some(id), Some(event)) => {
                    received.push((id, now));
                    if event == "end" {
                        return (received, None);
                    }
                }
                (None, Some(event)) => return (received, Some(event)),
                _ => {} // keep-alive comment
            }
        }
    }
    (received, None)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let subscribers = env_usize("SSE_SUBSCRIBERS", 500);
    let late = env_usize("SSE_LATE", 100);
    // Long enough for the job to outlast the subscribers' attaching (1.5 s for 500 here): at 40
    // epochs it ended in half a second, before they were all in, and no delivery was live.
    let epochs = env_usize("SSE_EPOCHS", 400);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tanuki::config::Config::with_data_dir(dir.path().join("data"));
    config.workers = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = tanuki::app::start(config, listener).await.expect("server starts");
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    println!("server on {base}; {}", memory());

    let response = client
        .post(format!("{base}/v1/datasets?name=load"))
        .header("content-type", "application/zip")
        .body(photos_zip(24))
        .send()
        .await
        .unwrap();
    let dataset: Value = response.json().await.unwrap();
    let spec = json!({
        "name": "sse-load", "dataset_id": dataset["id"],
        "split": {"validation": 0.25, "test": 0.15, "seed": 1},
        "input": {"height": 48, "width": 48, "scale": 0.00784313725490196, "offset": -1.0},
        "model": {"backbone": {"architecture": "small_cnn", "weights": null, "widths": [8, 16]}, "head": {"pooling": "avg", "dropout": 0.2, "units": 1}},
        "batch_size": 8, "log_every_steps": 1,
        "phases": [{"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": epochs}]
    });
    let job: Value = client.post(format!("{base}/v1/jobs")).json(&spec).send().await.unwrap().json().await.unwrap();
    let id = job["id"].as_str().expect("job accepted").to_owned();
    let url = format!("{base}/v1/jobs/{id}/events");

    let attach = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        tasks.push((0, tokio::spawn(subscribe(client.clone(), url.clone(), None))));
    }
    // Attached means the server counts the stream open; latency is measured from then on. A job
    // that ends first closes the streams, so the count never gets there: stop waiting then.
    loop {
        let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let open: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("tanuki_sse_subscribers "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if open >= subscribers || started.elapsed() > TIME_LIMIT / 2 {
            break;
        }
        let state: Value = client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if !matches!(state["state"].as_str(), Some("queued" | "running")) {
            println!(
                "the job ended before every subscriber attached ({open} open): raise SSE_EPOCHS for live deliveries"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let attached_at: DateTime<Utc> = Utc::now();
    println!("{subscribers} subscribers attached in {:.2?}; {}", attach.elapsed(), memory());

    // Late joiners, in the middle of the run, each resuming after a different event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = |client: reqwest::Client| {
        let url = format!("{base}/v1/jobs/{id}/metrics");
        async move {
            client.get(url).send().await.unwrap().json::<Value>().await.unwrap()["events"].as_array().unwrap().clone()
        }
    };
    let stored_now = history(client.clone()).await.len() as i64;
    for i in 0..late {
        let after = (i as i64 * stored_now.max(1)) / late.max(1) as i64;
        tasks.push((after, tokio::spawn(subscribe(client.clone(), url.clone(), Some(after)))));
    }
    println!("{late} late joiners (Last-Event-ID 0..{stored_now}) attached; {}", memory());

    let mut results = Vec::new();
    for (after, task) in tasks {
        let remaining = TIME_LIMIT.saturating_sub(started.elapsed());
        let result =
            tokio::time::timeout(remaining, task).await.expect("within the time limit").expect("subscriber task");
        results.push((after, result));
    }
    let events = history(client.clone()).await;
    let created: HashMap<i64, DateTime<Utc>> = events
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e["created_at"].as_str().unwrap().parse().unwrap()))
        .collect();
    let total = events.len() as i64;

    let mut failures = 0;
    let mut dropped = 0;
    let mut latencies = Vec::new();
    for (after, (received, final_event)) in &results {
        let ids: Vec<i64> = received.iter().map(|(id, _)| *id).collect();
        if final_event.is_some() {
            dropped += 1;
        }
        if ids != ((after + 1)..=total).collect::<Vec<_>>() {
            failures += 1;
            if failures <= 3 {
                eprintln!(
                    "subscriber after {after}: got {} events ({:?}…), final {final_event:?}",
                    ids.len(),
                    &ids[..ids.len().min(5)]
                );
            }
        }
        if *after == 0 {
            for (id, at) in received {
                let created = created[id];
                if created > attached_at {
                    let at: DateTime<Utc> = (*at).into();
                    latencies.push((at - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
            }
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "job {id}: {total} events; {} subscribers ({subscribers} from the start, {late} late); {failures} with a missing, repeated or out-of-order event; {dropped} dropped",
        results.len()
    );
    println!(
        "delivery latency (created_at → receipt, {} live deliveries): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!("memory at the end (server and clients share this process): {}", memory());
    running.stop().await.expect("clean shutdown");
    println!("total {:.2?}", started.elapsed());
    assert_eq!(failures, 0, "every subscriber gets every event exactly once, in order");
}
