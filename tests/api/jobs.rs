//! Job submission: every invalid spec is a 422 naming the field; queue-level behaviour.

use serde_json::{json, Value};

use crate::common::*;

async fn expect_invalid(server: &TestServer, spec: Value, field: &str) {
    let (status, body) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 422, "{spec}\n{body}");
    assert_eq!(body["field"], field, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_422_naming_the_field() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = upload_photos(&server, 2).await;
    let good = small_spec(&dataset);

    let mut spec = good.clone();
    spec["dataset_id"] = json!("no-such-dataset");
    expect_invalid(&server, spec, "dataset_id").await;

    let mut spec = good.clone();
    spec["phases"][0]["trainable"] = json!([]);
    expect_invalid(&server, spec, "phases[0].trainable").await;

    let mut spec = good.clone();
    spec["phases"][1]["trainable"] = json!(["backbone.block99"]);
    expect_invalid(&server, spec, "phases[1].trainable[0]").await;

    let mut spec = good.clone();
    spec["phases"][1]["optimizer"]["learning_rate"] = json!(0.0);
    expect_invalid(&server, spec, "phases[1].optimizer.learning_rate").await;

    let mut spec = good.clone();
    spec["phases"][0]["optimizer"]["learning_rate"] = json!(-1e-3);
    expect_invalid(&server, spec, "phases[0].optimizer.learning_rate").await;

    let mut spec = good.clone();
    spec["phases"][0]["epochs"] = json!(0);
    expect_invalid(&server, spec, "phases[0].epochs").await;

    let mut spec = good.clone();
    spec["split"] = json!({"validation": 0.6, "test": 0.4, "seed": 1});
    expect_invalid(&server, spec, "split.validation").await;

    let mut spec = good.clone();
    spec["phases"] = json!([]);
    expect_invalid(&server, spec, "phases").await;

    let mut spec = good.clone();
    spec["model"]["head"]["units"] = json!(3);
    expect_invalid(&server, spec, "model.head.units").await;

    let mut spec = good.clone();
    spec["model"]["backbone"]["weights"] = json!({"checkpoint": "nope"});
    expect_invalid(&server, spec, "model.backbone.weights.checkpoint").await;

    // Shape errors from the JSON itself: unknown fields (typos) and wrong types.
    let mut spec = good.clone();
    spec["phases"][0]["learning_rate"] = json!(0.1);
    expect_invalid(&server, spec, "phases[0].learning_rate").await;

    let mut spec = good.clone();
    spec["batch_sise"] = json!(4);
    expect_invalid(&server, spec, "batch_sise").await;

    let mut spec = good.clone();
    spec["phases"][0]["epochs"] = json!("two");
    expect_invalid(&server, spec, "phases[0].epochs").await;

    // Not JSON at all, and not declared as JSON.
    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{\"dataset_id\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "malformed_json");
    let response = server.client.post(server.url("/v1/jobs")).body("{}").send().await.unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 415, "{body}");

    let (status, list) = server.get("/v1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"], json!([]), "nothing invalid was queued");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_list_summarise_and_cancel() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = upload_photos(&server, 2).await;
    let (status, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["spec"]["batch_size"], 8);
    let id = job["id"].as_str().unwrap().to_owned();

    let (_, second) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    let (status, list) = server.get("/v1/jobs?state=queued").await;
    assert_eq!(status, 200);
    let ids: Vec<_> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].clone()).collect();
    assert_eq!(ids, vec![second["id"].clone(), json!(id)], "newest first");
    let (status, body) = server.get("/v1/jobs?state=bogus").await;
    assert_eq!(status, 400, "{body}");

    // The summary is there before the job runs.
    let (status, summary) = server.get(&format!("/v1/jobs/{id}/model")).await;
    assert_eq!(status, 200, "{summary}");
    let phases = summary["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    let total = summary["total_params"].as_u64().unwrap();
    for phase in phases {
        assert_eq!(
            phase["trainable_params"].as_u64().unwrap() + phase["non_trainable_params"].as_u64().unwrap(),
            total
        );
    }
    // Head only: a dense layer on 16 channels with 1 unit has 16 + 1 weights.
    assert_eq!(phases[0]["trainable_params"], 17);
    // Everything: all but the batch-norm moving statistics (2 per channel: 8 + 16 channels).
    assert_eq!(phases[1]["non_trainable_params"], 2 * (8 + 16));
    let layers = summary["layers"].as_array().unwrap();
    let bn = layers.iter().find(|l| l["type"] == "BatchNormalization").unwrap();
    assert_eq!(bn["params"], 4 * 8);
    assert_eq!(bn["trainable"], json!([false, true]));

    let (status, canceled) = server.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["state"], "canceled");
    let (status, body) = server.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "job_finished");

    // A canceled queued job's stream replays and ends.
    let response = server.client.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let events = read_sse(response, |_| false).await;
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["state", "state", "end"]);
    assert_eq!(events[2].data["state"], "canceled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_ends_failed_with_its_reason_and_the_worker_lives_on() {
    require_shared_data!();
    let server = TestServer::start().await;
    let broken = upload_photos(&server, 4).await;
    let healthy = upload_photos(&server, 4).await;
    // The dataset's files vanish under it (a disk fault, an operator's mistake).
    std::fs::remove_dir_all(server.dir.path().join("data/datasets").join(&broken)).unwrap();
    let mut spec = small_spec(&broken);
    spec["phases"] = json!([{"name": "head", "trainable": ["head"], "optimizer": {"type": "sgd", "learning_rate": 0.01}, "epochs": 1}]);
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let failed = server.wait_for_end(job["id"].as_str().unwrap(), std::time::Duration::from_secs(120)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains(&broken)), "the reason is stored: {failed}");
    assert!(failed["finished_at"].is_string());

    spec["dataset_id"] = json!(healthy);
    let (_, job) = server.post_json("/v1/jobs", &spec).await;
    let done = server.wait_for_end(job["id"].as_str().unwrap(), std::time::Duration::from_secs(300)).await;
    assert_eq!(done["state"], "succeeded", "the same worker trains the next job: {done}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_learning_rate_fails_the_job_as_diverged_instead_of_training_on_nan() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 4).await;
    let mut spec = small_spec(&dataset);
    spec["phases"] = json!([{"name": "boom", "trainable": ["all"], "optimizer": {"type": "sgd", "learning_rate": 1e35}, "epochs": 3}]);
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let failed = server.wait_for_end(id, std::time::Duration::from_secs(120)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error_code"], "diverged", "{failed}");
    assert!(failed["error"].as_str().is_some_and(|e| e.contains("not finite") && e.contains("step")), "{failed}");

    // The end event says where, with the last finite metrics.
    let (status, history) = server.get(&format!("/v1/jobs/{id}/metrics")).await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().expect("events");
    let end = events.iter().find(|e| e["event"] == "end").expect("an end event");
    assert_eq!(end["data"]["error_code"], "diverged", "{end}");
    let at = &end["data"]["diverged"];
    assert_eq!(at["phase_index"], 0, "{end}");
    assert!(at["global_step"].as_u64().is_some_and(|s| s >= 2), "{end}");
    assert!(at["last_finite"]["loss"].as_f64().is_some_and(f64::is_finite), "{end}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_query_parameter_is_problem_json_naming_it() {
    let server = TestServer::start_with(|c| c.workers = 0).await;
    for (path, field) in [("/v1/jobs?limit=9223372036854775808", "limit"), ("/v1/jobs?limit=abc", "limit")] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let (status, body) = read(response).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["code"], "invalid_query", "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    server.stop().await;
}
