//! The whole path on real photos: upload, the guide's two phases, SSE to the end, history,
//! checkpoints, summary, reconnect with Last-Event-ID, cancel, reproducibility.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sha2::Digest;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_job_streams_stores_and_checkpoints() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 16).await;
    let (status, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "queued");
    let id = job["id"].as_str().unwrap().to_owned();

    // Follow live from the start until the end event closes the stream.
    let response = server.client.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(600), read_sse(response, |_| false)).await.expect("job ends");
    let ids: Vec<i64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=events.len() as i64).collect::<Vec<_>>(), "ids are 1, 2, 3, ... with no gap or repeat");
    let last = events.last().unwrap();
    assert_eq!(last.event, "end");
    assert_eq!(last.data["state"], "succeeded", "{:?}", last.data);
    let test = &last.data["test"];
    assert!(test["loss"].as_f64().unwrap().is_finite() && test["accuracy"].as_f64().is_some(), "{test}");

    let of_kind = |kind: &str| events.iter().filter(|e| e.event == kind).collect::<Vec<_>>();
    let states: Vec<_> = of_kind("state").iter().map(|e| e.data["state"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states.first().map(String::as_str), Some("queued"));
    assert!(states.contains(&"running".to_owned()));
    assert_eq!(states.last().map(String::as_str), Some("succeeded"));

    let started: Vec<_> = of_kind("phase").into_iter().filter(|e| e.data["status"] == "started").collect();
    assert_eq!(started.len(), 2);
    assert_eq!(started[0].data["name"], "head");
    assert_eq!(started[0].data["trainable_params"], 17);
    assert_eq!(started[0].data["learning_rate"], 0.001);
    assert_eq!(started[1].data["name"], "fine_tune");
    assert_eq!(started[1].data["learning_rate"], 0.00001);
    assert_eq!(started[1].data["non_trainable_params"], 2 * (8 + 16), "only the moving statistics stay frozen");

    let epochs = of_kind("epoch");
    assert_eq!(epochs.len(), 3, "2 head epochs + 1 fine-tuning epoch");
    for epoch in &epochs {
        assert!(epoch.data["train"]["loss"].as_f64().unwrap().is_finite());
        assert!(epoch.data["validation"]["accuracy"].as_f64().is_some(), "{:?}", epoch.data);
        assert!(epoch.data["epochs_without_improvement"].as_u64().is_some());
    }
    assert!(of_kind("step").len() >= 3, "steps are reported");
    assert_eq!(of_kind("checkpoint").len(), 3, "one checkpoint per epoch");

    // The job, its stored history, and a reconnect that resumes exactly after an id.
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded");
    assert!(job["finished_at"].is_string() && job["started_at"].is_string());
    assert_eq!(job["test_metrics"], *test);
    let final_weights = &job["final_weights"];
    let response = server.client.get(server.url(final_weights["download"].as_str().unwrap())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), final_weights["sha256"].as_str().unwrap());
    safetensors::SafeTensors::deserialize(&bytes).expect("final weights are a safetensors file");
    let (status, history) = server.get(&format!("/v1/jobs/{id}/metrics")).await;
    assert_eq!(status, 200);
    let stored: Vec<i64> = history["events"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(stored, ids);

    let cut = ids[ids.len() / 2];
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", cut.to_string())
        .send()
        .await
        .unwrap();
    let resumed = read_sse(response, |_| false).await;
    let resumed_ids: Vec<i64> = resumed.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(resumed_ids, ((cut + 1)..=ids.len() as i64).collect::<Vec<_>>());
    // A client that has seen the end (or names an id past it) gets an empty stream that ends at
    // once, not one that waits for events a finished job will never send.
    for past_the_end in [ids.len() as i64, ids.len() as i64 + 1000] {
        let response = server
            .client
            .get(server.url(&format!("/v1/jobs/{id}/events")))
            .header("Last-Event-ID", past_the_end.to_string())
            .send()
            .await
            .unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(5), read_sse(response, |_| false)).await;
        assert_eq!(rest.expect("the stream ends").len(), 0, "after {past_the_end}");
    }
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/events")))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(read(response).await.0, 400);

    // Checkpoints: best and last of each phase, downloadable, intact, loadable.
    let (status, list) = server.get(&format!("/v1/jobs/{id}/checkpoints")).await;
    assert_eq!(status, 200);
    let checkpoints = list["checkpoints"].as_array().unwrap();
    for phase in 0..2 {
        let of_phase: Vec<_> = checkpoints.iter().filter(|c| c["phase_index"] == phase).collect();
        assert!(of_phase.iter().any(|c| c["best"] == true), "phase {phase} keeps its best");
        assert!(of_phase.iter().any(|c| c["last"] == true), "phase {phase} keeps its last");
    }
    let mut tensors_by_checkpoint = Vec::new();
    for checkpoint in checkpoints {
        let response = server.client.get(server.url(checkpoint["download"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let bytes = response.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, checkpoint["size"].as_u64().unwrap());
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), checkpoint["sha256"].as_str().unwrap());
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
        let tensors: HashMap<String, Vec<u8>> =
            file.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect();
        assert!(tensors.contains_key("head.dense.kernel"), "{:?}", tensors.keys());
        tensors_by_checkpoint.push((checkpoint["phase_index"].as_u64().unwrap(), tensors));
    }
    // Batch norm ran in inference mode throughout: the moving statistics of a randomly
    // initialised backbone are still exactly zeros and ones in every checkpoint.
    for (_, tensors) in &tensors_by_checkpoint {
        let mean = &tensors["backbone.block1.bn.moving_mean"];
        let variance = &tensors["backbone.block1.bn.moving_variance"];
        assert!(mean.chunks(4).all(|b| f32::from_le_bytes(b.try_into().unwrap()) == 0.0));
        assert!(variance.chunks(4).all(|b| f32::from_le_bytes(b.try_into().unwrap()) == 1.0));
    }
    // While only the head trained, the backbone did not move.
    let head_phase: Vec<_> = tensors_by_checkpoint.iter().filter(|(p, _)| *p == 0).collect();
    if head_phase.len() == 2 {
        for (name, data) in &head_phase[0].1 {
            if name.starts_with("backbone.") {
                assert_eq!(data, &head_phase[1].1[name], "{name} changed while frozen");
            }
        }
    }

    // A later job can start from this job's checkpoint.
    let mut spec = small_spec(&dataset);
    spec["model"]["backbone"]["weights"] = json!({"checkpoint": checkpoints[0]["id"]});
    spec["phases"] = json!([{"name": "head", "trainable": ["head"], "optimizer": {"type": "sgd", "learning_rate": 0.01}, "epochs": 1}]);
    let (status, reuse) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{reuse}");
    let reuse = server.wait_for_end(reuse["id"].as_str().unwrap(), Duration::from_secs(600)).await;
    assert_eq!(reuse["state"], "succeeded", "{reuse}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancels_at_a_batch_boundary() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 12).await;
    let mut spec = small_spec(&dataset);
    spec["phases"][0]["epochs"] = json!(50);
    // Batches long enough (tens of ms) that "stopped at the next batch boundary" is
    // distinguishable from "ran on for epochs" across the HTTP round trip of the cancel.
    spec["input"] = json!({"height": 96, "width": 96});
    spec["model"]["backbone"]["widths"] = json!([32, 64, 128]);
    spec["phases"][0]["trainable"] = json!(["all"]);
    let (_, job) = server.post_json("/v1/jobs", &spec).await;
    let id = job["id"].as_str().unwrap().to_owned();

    let response = server.client.get(server.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
    let seen = read_sse(response, |e| e.event == "step").await;
    assert_eq!(seen.last().unwrap().event, "step");
    let (status, body) = server.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{body}");

    let after = seen.last().unwrap().id.unwrap();
    let response =
        server.client.get(server.url(&format!("/v1/jobs/{id}/events?last_event_id={after}"))).send().await.unwrap();
    let rest =
        tokio::time::timeout(Duration::from_secs(120), read_sse(response, |_| false)).await.expect("stops promptly");
    let end = rest.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.data["state"], "canceled");
    let epochs = rest.iter().filter(|e| e.event == "epoch").count();
    let steps = rest.iter().filter(|e| e.event == "step").count();
    eprintln!("after the first step: {steps} more steps, {epochs} more epochs before the cancel took effect");
    assert!(epochs <= 1, "stopped within the epoch it was in, not after {epochs} more");
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "canceled");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_spec_and_data_give_the_same_metrics() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 8).await;
    let mut spec = small_spec(&dataset);
    spec["phases"][0]["epochs"] = json!(1);
    let mut metrics = Vec::new();
    for _ in 0..2 {
        let (_, job) = server.post_json("/v1/jobs", &spec).await;
        let id = job["id"].as_str().unwrap().to_owned();
        let job = server.wait_for_end(&id, Duration::from_secs(600)).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let (_, history) = server.get(&format!("/v1/jobs/{id}/metrics")).await;
        let epochs: Vec<_> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "epoch")
            .map(|e| (e["data"]["train"].clone(), e["data"]["validation"].clone()))
            .collect();
        metrics.push((epochs, job["test_metrics"].clone()));
    }
    assert_eq!(metrics[0], metrics[1]);
    server.stop().await;
}
