//! A job running when the server process is killed resumes from its last checkpoint after a
//! restart (the real binary, killed with SIGKILL).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_server(data_dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_tanuki"))
        .arg("serve")
        .env("TANUKI_ADDR", format!("127.0.0.1:{port}"))
        .env("TANUKI_DATA_DIR", data_dir)
        .env("TANUKI_WORKERS", "1")
        .env("RUST_LOG", "tanuki=warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    // Owned by `Server` from here on, so its `Drop` kills and reaps it on every path.
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{}/healthz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become healthy");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_the_job_from_its_last_checkpoint() {
    require_shared_data!();
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let port = free_port();
    let server = spawn_server(dir.path(), port).await;

    let archive = zip_of(&real_photos("train", 10));
    let response = client
        .post(format!("{}/v1/datasets?name=pets", server.base))
        .header("content-type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap();
    let (status, dataset) = read(response).await;
    assert_eq!(status, 201, "{dataset}");
    let mut spec = small_spec(dataset["id"].as_str().unwrap());
    // Long enough that the kill lands inside the first phase even on a fast machine.
    spec["phases"][0]["epochs"] = json!(20);
    let response = client.post(format!("{}/v1/jobs", server.base)).json(&spec).send().await.unwrap();
    let (_, job) = read(response).await;
    let id = job["id"].as_str().unwrap().to_owned();

    // Kill it hard right after the first checkpoint is stored.
    let response = client.get(format!("{}/v1/jobs/{id}/events", server.base)).send().await.unwrap();
    let before = read_sse(response, |e| e.event == "checkpoint").await;
    assert_eq!(before.last().unwrap().event, "checkpoint");
    drop(server);

    let server = spawn_server(dir.path(), free_port()).await;
    let response = client.get(format!("{}/v1/jobs/{id}/events", server.base)).send().await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(600), read_sse(response, |_| false)).await.expect("job ends");
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["state"], "succeeded", "{:?}", end.data);

    let states: Vec<_> = events.iter().filter(|e| e.event == "state").map(|e| e.data.clone()).collect();
    assert!(
        states
            .iter()
            .any(|s| s["state"] == "queued" && s["reason"].as_str().is_some_and(|r| r.contains("interrupted"))),
        "{states:?}"
    );
    let resumed = states.iter().rev().find(|s| s["state"] == "running" && s["attempt"] == 2).expect("a second attempt");
    assert_eq!(resumed["resumed_from"]["phase_index"], 0, "{resumed}");
    assert!(resumed["resumed_from"]["epoch"].as_u64().unwrap() >= 1, "{resumed}");

    // Every epoch of the spec ran exactly once after the resume point: no epoch was redone
    // from scratch and none is missing.
    let first_epoch_after_resume = events
        .iter()
        .skip_while(|e| !(e.event == "state" && e.data["attempt"] == 2))
        .find(|e| e.event == "epoch")
        .expect("an epoch after resuming");
    let done = resumed["resumed_from"]["epoch"].as_u64().unwrap();
    // The next epoch of the phase, or the first of the next phase when the checkpoint ended one.
    let expected = if done == 20 { (1, 1) } else { (0, done + 1) };
    let got = (
        first_epoch_after_resume.data["phase_index"].as_u64().unwrap(),
        first_epoch_after_resume.data["epoch"].as_u64().unwrap(),
    );
    assert_eq!(got, expected, "{resumed}");
    // Both phases ran to their last epoch. (An epoch that ended after the last checkpoint but
    // before the kill is run again, so its event can appear twice: at-least-once, by design.)
    let last_epoch_of = |phase: u64| {
        events
            .iter()
            .filter(|e| e.event == "epoch" && e.data["phase_index"] == phase)
            .filter_map(|e| e.data["epoch"].as_u64())
            .max()
    };
    assert_eq!((last_epoch_of(0), last_epoch_of(1)), (Some(20), Some(1)));
    let response = client.get(format!("{}/v1/jobs/{id}", server.base)).send().await.unwrap();
    let (_, job) = read(response).await;
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["state"], "succeeded");
}
