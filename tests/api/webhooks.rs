//! Webhooks: a real receiver on loopback checks each delivery's Standard Webhooks signature
//! and fails the first attempts; the server retries with backoff, records every attempt, gives
//! up when the retry window closes, and keeps an undelivered message across a restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tanuki::config::Config;

use crate::common::{self, require_shared_data, TestServer};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got, and whether its signature held.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: i64,
    signed: bool,
    body: Value,
}

/// An HTTP server on loopback that verifies signatures as a receiver following the Standard
/// Webhooks spec would (its own HMAC, not the server's code), answering 503 to the first
/// `failures` requests and 204 after; a request with a bad signature gets 401.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(failures: usize) -> Self {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), failures)
    }

    fn start_on(listener: tokio::net::TcpListener, failures: usize) -> Self {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
                    let key = BASE64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
                    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
                    mac.update(format!("{id}.{timestamp}.").as_bytes());
                    mac.update(&body);
                    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
                    // The header may carry several space-separated signatures.
                    let signed = header("webhook-signature").split(' ').any(|s| s == expected)
                        && header("content-type") == "application/json";
                    let record = Received {
                        id,
                        timestamp: timestamp.parse().unwrap_or(0),
                        signed,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    };
                    let mut log = log.lock().unwrap();
                    log.push(record);
                    if !signed {
                        StatusCode::UNAUTHORIZED
                    } else if log.len() <= failures {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, received, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls the job's deliveries until the first one is no longer pending.
async fn wait_for_delivery(server: &TestServer, job_id: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = server.get(&format!("/v1/jobs/{job_id}/webhooks")).await;
        assert_eq!(status, 200, "{body}");
        if body["deliveries"][0]["state"].as_str().is_some_and(|s| s != "pending") {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "the delivery did not settle in time: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// A spec no worker needs to train: these tests cancel it while it is queued.
async fn queued_spec(server: &TestServer, url: &str) -> Value {
    let dataset = common::upload_photos(server, 2).await;
    let mut spec = common::small_spec(&dataset);
    spec["webhook"] = json!({"url": url, "secret": SECRET});
    spec
}

#[tokio::test]
async fn a_finished_job_is_posted_signed_and_retried_until_the_receiver_takes_it() {
    require_shared_data!();
    let receiver = Receiver::start(2).await;
    let server = TestServer::start_with(|c| c.webhook_first_retry_ms = 200).await;
    let dataset = common::upload_photos(&server, 6).await;
    let mut spec = common::small_spec(&dataset);
    spec["webhook"] = json!({"url": receiver.url(), "secret": SECRET});
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    // The secret is never shown back, in the answer or anywhere in the job.
    assert!(!job.to_string().contains("whsec_"), "{job}");
    assert_eq!(job["webhook"], json!({"url": receiver.url(), "deliveries": format!("/v1/jobs/{id}/webhooks")}));
    let ended = server.wait_for_end(&id, Duration::from_secs(120)).await;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert!(!ended.to_string().contains("whsec_"));

    let webhooks = wait_for_delivery(&server, &id, Duration::from_secs(30)).await;
    assert_eq!(webhooks["url"], receiver.url());
    let delivery = &webhooks["deliveries"][0];
    assert_eq!(delivery["state"], "delivered", "{webhooks}");
    assert_eq!(delivery["type"], "job.succeeded");
    assert!(delivery["next_attempt_at"].is_null());
    let attempts = delivery["attempts"].as_array().unwrap();
    let statuses: Vec<_> = attempts.iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [503, 503, 204], "{webhooks}");
    assert_eq!(attempts[0]["error"], "the receiver answered 503 Service Unavailable");
    assert!(attempts[2]["error"].is_null());
    // Backoff: 200 ms after the first failure, 400 ms after the second (lower bounds only).
    let gaps: Vec<i64> =
        attempts.windows(2).map(|w| (at(&w[1]["started_at"]) - at(&w[0]["started_at"])).num_milliseconds()).collect();
    assert!(gaps[0] >= 190 && gaps[1] >= 390, "gaps {gaps:?}");

    // What the receiver saw: three signed requests, one message id, the job's end as the body.
    let received = receiver.received();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received.iter().all(|r| r.signed), "{received:?}");
    assert!(received.iter().all(|r| r.id == delivery["id"].as_str().unwrap()));
    assert!(delivery["id"].as_str().unwrap().starts_with("msg_"));
    let now = Utc::now().timestamp();
    assert!(received.iter().all(|r| (now - r.timestamp).abs() < 300));
    let body = &received[2].body;
    assert_eq!(body, &delivery["payload"]);
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["job_id"], id);
    assert_eq!(body["data"]["state"], "succeeded");
    assert_eq!(body["data"]["href"], format!("/v1/jobs/{id}"));
    assert_eq!(body["data"]["test_metrics"], ended["test_metrics"]);
    assert_eq!(at(&body["timestamp"]), at(&ended["finished_at"]));

    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\ntanuki_webhook_messages{state=\"delivered\"} 1\n"), "{metrics}");
    assert!(metrics.contains("\ntanuki_webhook_messages{state=\"pending\"} 0\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_delivery_is_given_up_when_the_retry_window_closes_and_names_why_each_attempt_failed() {
    require_shared_data!();
    let always_failing = Receiver::start(usize::MAX).await;
    // A port nothing listens on: connections are refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let server = TestServer::start_with(|c| {
        c.workers = 0;
        c.webhook_first_retry_ms = 100;
        c.webhook_retry_window_secs = 1;
    })
    .await;
    let mut jobs = Vec::new();
    for url in [always_failing.url(), format!("http://{closed}/hook")] {
        let (status, job) = server.post_json("/v1/jobs", &queued_spec(&server, &url).await).await;
        assert_eq!(status, 201, "{job}");
        let id = job["id"].as_str().unwrap().to_owned();
        let (status, canceled) = server.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
        assert_eq!((status, canceled["state"].as_str()), (200, Some("canceled")), "{canceled}");
        jobs.push(id);
    }
    for (id, says) in jobs.iter().zip(["the receiver answered 503", "error sending request"]) {
        let webhooks = wait_for_delivery(&server, id, Duration::from_secs(30)).await;
        let delivery = &webhooks["deliveries"][0];
        assert_eq!(delivery["state"], "failed", "{webhooks}");
        assert_eq!(delivery["type"], "job.canceled");
        assert_eq!(delivery["payload"]["data"]["state"], "canceled");
        let attempts = delivery["attempts"].as_array().unwrap();
        // 100, 200, 400 ms waits fit a 1 s window; the next (800 ms) would not.
        assert!((2..=5).contains(&attempts.len()), "{webhooks}");
        let window_end = at(&delivery["created_at"]) + chrono::Duration::seconds(1);
        for attempt in attempts {
            assert!(at(&attempt["started_at"]) <= window_end, "{attempt}");
            let error = attempt["error"].as_str().unwrap();
            assert!(error.contains(says), "{error}");
        }
        if says.starts_with("error sending") {
            assert!(attempts.iter().all(|a| a["status_code"].is_null()));
        }
    }
    // Nothing more comes once given up.
    let tried = always_failing.received().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(always_failing.received().len(), tried);
    assert!(always_failing.received().iter().all(|r| r.signed));
    server.stop().await;
}

#[tokio::test]
async fn webhooks_that_cannot_work_are_refused_naming_the_field() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let spec = queued_spec(&server, "http://127.0.0.1:9/hook").await;
    for (webhook, field, says) in [
        (json!({"url": "ftp://example.com/x", "secret": SECRET}), "webhook.url", "http or https"),
        (json!({"url": "/relative", "secret": SECRET}), "webhook.url", "not an absolute URL"),
        (json!({"url": "http://example.com/x", "secret": "hunter2"}), "webhook.secret", "starts with"),
        (json!({"url": "http://example.com/x", "secret": "whsec_c2hvcnQ="}), "webhook.secret", "24 to 64 bytes"),
        (json!({"url": "http://example.com/x"}), "webhook", "secret"),
        (json!({"url": "http://example.com/x", "secret": SECRET, "events": []}), "webhook.events", "unknown field"),
    ] {
        let mut spec = spec.clone();
        spec["webhook"] = webhook;
        let (status, problem) = server.post_json("/v1/jobs", &spec).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(says), "{problem}");
    }
    let (status, jobs) = server.get("/v1/jobs").await;
    assert_eq!((status, jobs["jobs"].as_array().unwrap().len()), (200, 0), "{jobs}");
    // A job without a webhook has no deliveries; an unknown job is 404.
    let mut spec = spec;
    spec.as_object_mut().unwrap().remove("webhook");
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let (status, body) = server.get(&format!("/v1/jobs/{}/webhooks", job["id"].as_str().unwrap())).await;
    assert_eq!((status, &body["url"], &body["deliveries"]), (200, &Value::Null, &json!([])), "{body}");
    let (status, _) = server.get("/v1/jobs/0190f5a2-0000-7000-8000-000000000000/webhooks").await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn an_undelivered_message_survives_a_restart_and_is_delivered_by_the_next_process() {
    require_shared_data!();
    let data_dir = tempfile::tempdir().unwrap();
    let start = |first_retry_ms: u64| {
        let mut config = Config::with_data_dir(data_dir.path().join("data"));
        config.workers = 0;
        config.webhook_first_retry_ms = first_retry_ms;
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tanuki::app::start(config, listener).await.unwrap()
        }
    };
    // The receiver's port is chosen now; nothing listens on it while the first process runs.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = format!("http://{receiver_addr}/hook");

    let first = start(1500).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", first.addr);
    let archive = common::zip_of(&common::real_photos("train", 2));
    let dataset: Value = client
        .post(format!("{base}/v1/datasets?name=tiny"))
        .header("content-type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut spec = common::small_spec(dataset["id"].as_str().unwrap());
    spec["webhook"] = json!({"url": url, "secret": SECRET});
    let job: Value = client.post(format!("{base}/v1/jobs")).json(&spec).send().await.unwrap().json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    client.post(format!("{base}/v1/jobs/{id}/cancel")).send().await.unwrap();
    // The first attempt is refused; the next is 1.5 s away when this process stops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value =
            client.get(format!("{base}/v1/jobs/{id}/webhooks")).send().await.unwrap().json().await.unwrap();
        if body["deliveries"][0]["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(body["deliveries"][0]["state"], "pending", "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no first attempt: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await.unwrap();

    let receiver = Receiver::start_on(tokio::net::TcpListener::bind(receiver_addr).await.unwrap(), 0);
    let second = start(1500).await;
    let base = format!("http://{}", second.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body: Value =
            client.get(format!("{base}/v1/jobs/{id}/webhooks")).send().await.unwrap().json().await.unwrap();
        if body["deliveries"][0]["state"] == "delivered" {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered after the restart: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let attempts = body["deliveries"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{body}");
    assert!(attempts[0]["status_code"].is_null() && attempts[1]["status_code"] == 204, "{body}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].signed);
    assert_eq!(received[0].body["data"]["job_id"], id);
    second.stop().await.unwrap();
}
