//! API tokens, stream tokens, CORS, probes, metrics, and the final event on shutdown.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_everything_but_probes_and_the_shell_needs_one() {
    require_shared_data!();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# ops\nfile-token\n\n").unwrap();
    let server = TestServer::start_with(|c| {
        c.workers = 0;
        c.api_tokens = vec!["list-token".into()];
        c.api_tokens_file = Some(file.clone());
        c.cors_origins = vec!["https://dash.example".into()];
    })
    .await;
    for path in ["/healthz", "/readyz", "/", "/assets/app.js"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path} is public");
    }
    for path in ["/v1/jobs", "/v1/datasets", "/metrics", "/openapi.json", "/v1/jobs/x/events"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let (status, body) = read(response).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{path}: {body}");
        let response = server.client.get(server.url(path)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path} with a wrong token");
    }
    for token in ["list-token", "file-token"] {
        let response = server.client.get(server.url("/v1/jobs")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{token}");
    }

    // A stream token opens one job's events, and nothing else.
    let archive = zip_of(&real_photos("train", 4));
    let response = server
        .client
        .post(server.url("/v1/datasets"))
        .bearer_auth("list-token")
        .header("content-type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap();
    let (status, dataset) = read(response).await;
    assert_eq!(status, 201, "{dataset}");
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .bearer_auth("list-token")
        .json(&small_spec(dataset["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    let (_, job) = read(response).await;
    let id = job["id"].as_str().unwrap();
    let response =
        server.client.post(server.url("/v1/stream-tokens")).json(&json!({"job_id": id})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "a stream token needs a bearer token");
    let response = server
        .client
        .post(server.url("/v1/stream-tokens"))
        .bearer_auth("file-token")
        .json(&json!({"job_id": id}))
        .send()
        .await
        .unwrap();
    let (status, issued) = read(response).await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap();
    let response =
        server.client.get(server.url(&format!("/v1/jobs/{id}/events?access_token={token}"))).send().await.unwrap();
    let first = read_sse(response, |_| true).await;
    assert_eq!(first[0].event, "state", "the queued job's first event");
    let response = server.client.get(server.url(&format!("/v1/jobs/{id}?access_token={token}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "only the events endpoint takes it");
    let response =
        server.client.get(server.url(&format!("/v1/jobs/{id}/events?access_token={token}x"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "a tampered token");

    // CORS: a preflight from the configured origin is answered without a token.
    let response = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/jobs"))
        .header("origin", "https://dash.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["access-control-allow-origin"], "https://dash.example");
    let response =
        server.client.get(server.url("/healthz")).header("origin", "https://other.example").send().await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics() {
    require_shared_data!();
    let server = TestServer::start().await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let disk = ready["disk"].clone();
    assert!(disk["available_bytes"].as_u64().unwrap() <= disk["total_bytes"].as_u64().unwrap(), "{ready}");
    assert!(disk["total_bytes"].as_u64().unwrap() > 0, "{ready}");
    assert_eq!(ready, json!({"status": "ready", "workers_alive": 1, "workers_configured": 1, "disk": disk}));

    let dataset = upload_photos(&server, 8).await;
    let (_, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    let job = server.wait_for_end(job["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(job["state"], "succeeded");

    let response = server.client.get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} in\n{text}"))[name.len() + 1..]
            .parse()
            .unwrap()
    };
    assert_eq!(value("tanuki_jobs{state=\"succeeded\"}"), 1.0);
    assert_eq!(value("tanuki_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(value("tanuki_queue_depth"), 0.0);
    assert_eq!(value("tanuki_workers_alive"), 1.0);
    assert!(value("tanuki_upload_bytes_total") > 10_000.0, "{text}");
    assert!(value("tanuki_train_steps_total") >= 3.0, "{text}");
    assert!(value("tanuki_train_steps_per_second") > 0.0, "{text}");
    assert!(text.contains("# TYPE tanuki_sse_subscribers gauge"));
    value("tanuki_sse_dropped_total");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_a_stream_ends_with_a_shutdown_event() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = upload_photos(&server, 4).await;
    let (_, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let response = server.client.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let reader = tokio::spawn(read_sse(response, |_| false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    server.stop().await;
    let events = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the stream ends").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = events.last().unwrap();
    assert_eq!(last.event, "shutdown", "{events:?}");
    assert_eq!(last.id, None, "a final event carries no id, so Last-Event-ID stays at the last real one");
    assert_eq!(last.data["last_event_id"], 1);
}
