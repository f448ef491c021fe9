//! A job's evaluation: per-epoch confusion matrices in its events, the final weights' on the
//! validation and test sets, and any kept checkpoint's.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// The matrix's total and that each class's support is its row's sum.
fn check_consistent(e: &Value, classes: usize) -> u64 {
    let matrix = e["confusion_matrix"].as_array().unwrap();
    assert_eq!(matrix.len(), classes, "{e}");
    let mut total = 0;
    for (row, class) in matrix.iter().zip(e["per_class"].as_array().unwrap()) {
        let row: u64 = row.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(class["support"].as_u64().unwrap(), row, "{e}");
        for key in ["precision", "recall", "f1"] {
            assert!((0.0..=1.0).contains(&class[key].as_f64().unwrap()), "{e}");
        }
        total += row;
    }
    assert_eq!(e["images"].as_u64().unwrap(), total);
    let diagonal: u64 = (0..classes).map(|c| matrix[c][c].as_u64().unwrap()).sum();
    assert!((e["accuracy"].as_f64().unwrap() - diagonal as f64 / total as f64).abs() < 1e-12, "{e}");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reports_its_evaluation() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 12).await;
    let spec = small_spec(&dataset);
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = server.wait_for_end(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let (status, history) = server.get(&format!("/v1/jobs/{id}/metrics")).await;
    assert_eq!(status, 200);
    let events = history["events"].as_array().unwrap();
    let data_ready = events.iter().find(|e| e["data"]["stage"] == "data_ready").unwrap();
    let (validation_images, test_images) = (
        data_ready["data"]["validation_images"].as_u64().unwrap(),
        data_ready["data"]["test_images"].as_u64().unwrap(),
    );
    assert!(validation_images > 0 && test_images > 0, "{data_ready}");
    let epochs: Vec<&Value> = events.iter().filter(|e| e["event"] == "epoch").collect();
    assert_eq!(epochs.len(), 3);
    for epoch in &epochs {
        let e = &epoch["data"]["evaluation"];
        assert_eq!(check_consistent(e, 2), validation_images);
        // The same pass as the epoch's validation loss and accuracy.
        assert!(
            (e["accuracy"].as_f64().unwrap() - epoch["data"]["validation"]["accuracy"].as_f64().unwrap()).abs() < 1e-12
        );
        let auc = e["roc_auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc) && (0.0..=1.0).contains(&e["pr_auc"].as_f64().unwrap()), "{e}");
        assert!(e.get("top5_accuracy").is_none(), "two classes: no top-5");
    }
    let end = events.last().unwrap();
    assert_eq!(end["event"], "end");

    let (status, evaluation) = server.get(&format!("/v1/jobs/{id}/evaluation")).await;
    assert_eq!(status, 200, "{evaluation}");
    assert_eq!(evaluation["classes"], json!(["cats", "dogs"]));
    assert_eq!(check_consistent(&evaluation["validation"], 2), validation_images);
    assert_eq!(check_consistent(&evaluation["test"], 2), test_images);
    assert_eq!(evaluation["validation"], end["data"]["evaluation"]["validation"], "the end event carries the same");
    assert_eq!(evaluation["test"], end["data"]["evaluation"]["test"]);
    let test_accuracy = job["test_metrics"]["accuracy"].as_f64().or(end["data"]["test"]["accuracy"].as_f64()).unwrap();
    assert!((evaluation["test"]["accuracy"].as_f64().unwrap() - test_accuracy).abs() < 1e-12, "{evaluation}");

    // The worst-classified images, highest loss first, with their thumbnails as the model saw them.
    for (set, images) in [("validation", validation_images), ("test", test_images)] {
        let worst = evaluation[set]["worst"].as_array().unwrap();
        assert_eq!(worst.len() as u64, images.min(12), "{set}: {evaluation}");
        let losses: Vec<f64> = worst.iter().map(|w| w["loss"].as_f64().unwrap()).collect();
        assert!(losses.windows(2).all(|w| w[0] >= w[1]), "{set}: worst first: {losses:?}");
        for w in worst {
            let file = w["file"].as_str().unwrap();
            assert!(file.starts_with(&format!("{}/", w["true_class"].as_str().unwrap())), "{w}");
            let p = w["true_probability"].as_f64().unwrap();
            assert!((w["loss"].as_f64().unwrap() + p.ln()).abs() < 1e-6, "{w}");
        }
        let response = server
            .client
            .get(server.url(&format!("/v1/jobs/{id}/evaluation/examples/{set}/0/image")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "image/png");
        let png = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
        assert_eq!((png.width(), png.height()), (32, 32), "the input size of small_spec");
        let beyond = worst.len();
        let (status, body) = server.get(&format!("/v1/jobs/{id}/evaluation/examples/{set}/{beyond}/image")).await;
        assert_eq!(status, 404, "{body}");
    }
    let (status, body) = server.get(&format!("/v1/jobs/{id}/evaluation/examples/train/0/image")).await;
    assert_eq!(status, 400, "{body}");

    // The final weights are a kept checkpoint's: asking for it gives the same; an earlier one has
    // its own validation and no test evaluation.
    let (_, list) = server.get(&format!("/v1/jobs/{id}/checkpoints")).await;
    let checkpoints = list["checkpoints"].as_array().unwrap();
    let final_id = evaluation["checkpoint_id"].as_str().expect("the final weights are kept");
    assert!(checkpoints.iter().any(|c| c["id"] == final_id));
    let (status, same) = server.get(&format!("/v1/jobs/{id}/evaluation?checkpoint={final_id}")).await;
    assert_eq!(status, 200, "{same}");
    assert_eq!((&same["validation"], &same["test"]), (&evaluation["validation"], &evaluation["test"]));
    let other = checkpoints.iter().map(|c| c["id"].as_str().unwrap()).find(|c| *c != final_id).unwrap();
    let (status, earlier) = server.get(&format!("/v1/jobs/{id}/evaluation?checkpoint={other}")).await;
    assert_eq!(status, 200, "{earlier}");
    assert_eq!(earlier["checkpoint_id"], other);
    assert_eq!(check_consistent(&earlier["validation"], 2), validation_images);
    assert!(earlier["test"].is_null(), "{earlier}");

    let (status, body) = server.get(&format!("/v1/jobs/{id}/evaluation?checkpoint=nope")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.get("/v1/jobs/nope/evaluation").await;
    assert_eq!(status, 404, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_job_has_no_final_evaluation() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = upload_photos(&server, 2).await;
    let (status, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    assert_eq!(status, 201, "{job}");
    let (status, body) = server.get(&format!("/v1/jobs/{}/evaluation", job["id"].as_str().unwrap())).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "no_evaluation");
    server.stop().await;
}

/// Recall of `class` on the validation set of the final weights, and the job's phase event.
async fn recall_of(server: &TestServer, spec: &Value, class: &str) -> (f64, Value) {
    let (status, job) = server.post_json("/v1/jobs", spec).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = server.wait_for_end(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, evaluation) = server.get(&format!("/v1/jobs/{id}/evaluation")).await;
    let row = evaluation["validation"]["per_class"].as_array().unwrap().iter().find(|c| c["class"] == class).unwrap();
    let (_, history) = server.get(&format!("/v1/jobs/{id}/metrics")).await;
    let phase = history["events"].as_array().unwrap().iter().find(|e| e["event"] == "phase").unwrap()["data"].clone();
    (row["recall"].as_f64().unwrap(), phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_class_weights_raise_the_small_class_recall() {
    require_shared_data!();
    let server = TestServer::start().await;
    // 6 cats to 1 dog for training; the validation set is balanced.
    let photos = real_photos("train", 24);
    let train: Vec<_> = photos
        .iter()
        .filter(|(p, _)| p.starts_with("cats/"))
        .cloned()
        .chain(photos.iter().filter(|(p, _)| p.starts_with("dogs/")).take(4).cloned())
        .collect();
    let (status, train) = server.upload("imbalanced", zip_of(&train), "application/zip").await;
    assert_eq!(status, 201, "{train}");
    let (status, validation) =
        server.upload("balanced", zip_of(&real_photos("validation", 12)), "application/zip").await;
    assert_eq!(status, 201, "{validation}");
    let (status, backbone) = server
        .client
        .post(server.url("/v1/backbones?architecture=mobilenet_v2&alpha=0.35&format=keras"))
        .body(
            std::fs::read(shared_data().join("../../weights/mobilenet_v2_0.35_224_imagenet.keras.safetensors"))
                .unwrap(),
        )
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!(status, 201, "{backbone:?}");
    let (_, list) = server.get("/v1/backbones").await;
    let weights = list["weights"][0]["id"].clone();
    let mut spec = json!({
        "dataset_id": train["id"], "validation_dataset_id": validation["id"],
        "split": {"validation": 0.0, "test": 0.0, "seed": 1},
        "input": {"height": 96, "width": 96},
        "model": {"backbone": {"architecture": "mobilenet_v2", "alpha": 0.35, "weights": weights},
                  "head": {"dropout": 0.0, "units": 1}},
        "batch_size": 8,
        "phases": [{"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001},
                    "epochs": 3}]
    });
    let (plain, phase) = recall_of(&server, &spec, "dogs").await;
    assert!(phase.get("class_weights").is_none(), "{phase}");
    spec["class_weights"] = json!("balanced");
    let (balanced, phase) = recall_of(&server, &spec, "dogs").await;
    // sklearn's "balanced": 28 / (2 * 24) and 28 / (2 * 4).
    assert_eq!(phase["class_weights"], json!({"cats": 28.0 / 48.0, "dogs": 3.5}), "{phase}");
    eprintln!("validation recall of dogs: {plain} unweighted, {balanced} balanced");
    assert!(balanced > plain, "recall of the small class: {plain} unweighted, {balanced} balanced");

    // A class the dataset lacks, or a weight that is not positive, names the field.
    spec["class_weights"] = json!({"wolves": 2.0});
    let (status, body) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("class_weights.wolves")), "{body}");
    spec["class_weights"] = json!({"dogs": 0.0});
    let (status, body) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("class_weights.dogs")), "{body}");
    spec["class_weights"] = json!("unbalanced");
    let (status, body) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 422, "{body}");
    server.stop().await;
}
