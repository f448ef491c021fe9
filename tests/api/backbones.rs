//! Pretrained backbones: upload checked against the architecture, jobs that start from them,
//! summaries before training, predictions after.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

fn weights_file(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/weights").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `POST /v1/jobs/{id}/predict` of one JPEG: the answer, which must be a 200.
async fn predict_photo(server: &TestServer, id: &str, jpeg: &[u8]) -> Value {
    let response = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/predict")))
        .header("content-type", "image/jpeg")
        .body(jpeg.to_vec())
        .send()
        .await
        .unwrap();
    let (status, answer) = read(response).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn upload_weights(server: &TestServer, query: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = server
        .client
        .post(server.url(&format!("/v1/backbones?{query}")))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xception_summary_matches_keras_counts() {
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let request = json!({
        "model": {"backbone": {"architecture": "xception"}, "head": {"pooling": "avg", "dropout": 0.2, "units": 1}},
        "input": {"height": 150, "width": 150},
        "phases": [
            {"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 1},
            {"name": "fine_tune", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.00001}, "epochs": 1}
        ]
    });
    let (status, summary) = server.post_json("/v1/models/summary", &request).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["total_params"], 20_863_529);
    assert_eq!(summary["phases"][0]["trainable_params"], 2_049);
    assert_eq!(summary["phases"][1]["trainable_params"], 20_809_001);
    assert_eq!(summary["phases"][1]["non_trainable_params"], 54_528);

    let mut bad = request.clone();
    bad["phases"][0]["optimizer"]["learning_rate"] = json!(-1);
    let (status, body) = server.post_json("/v1/models/summary", &bad).await;
    assert_eq!(status, 422, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_checked_against_the_architecture() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let keras = weights_file("mobilenet_v2_0.35_224_imagenet.keras.safetensors");
    let (status, backbone) =
        upload_weights(&server, "architecture=mobilenet_v2&alpha=0.35&format=keras", keras.clone()).await;
    assert_eq!(status, 201, "{backbone}");
    assert_eq!(backbone["architecture"], "mobilenet_v2");
    assert_eq!(backbone["tensors"], 260);

    // Right file, wrong width multiplier: names the first tensor that does not fit.
    let (status, body) =
        upload_weights(&server, "architecture=mobilenet_v2&alpha=1.0&format=keras", keras.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "weights_mismatch");
    assert!(body["detail"].as_str().unwrap().contains('`'), "{body}");
    // torchvision names are not Keras names.
    let torchvision = weights_file("mobilenet_v2_1.0_224_imagenet.torchvision.safetensors");
    let (status, body) = upload_weights(&server, "architecture=mobilenet_v2&alpha=1.0&format=keras", torchvision).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        upload_weights(&server, "architecture=mobilenet_v2&alpha=0.35&format=keras", b"garbage".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    // Bad parameters are refused before the body is read: send a small one, since a large body
    // may still be on its way when the answer closes the connection.
    let (status, body) = upload_weights(&server, "architecture=resnet&format=keras", b"x".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        upload_weights(&server, "architecture=mobilenet_v2&alpha=0.35&format=onnx", b"x".to_vec()).await;
    assert_eq!(status, 400, "{body}");

    let (status, list) = server.get("/v1/backbones").await;
    assert_eq!(status, 200);
    assert_eq!(list["weights"].as_array().unwrap().len(), 1, "rejected files are not stored");
    assert!(list["architectures"].as_array().unwrap().iter().any(|a| a["name"] == "xception"));
    let stored: Vec<_> = std::fs::read_dir(server.dir.path().join("data/backbones")).unwrap().collect();
    assert_eq!(stored.len(), 1);

    // In use by a queued job: not deletable; then deletable.
    let dataset = upload_photos(&server, 2).await;
    let id = backbone["id"].as_str().unwrap();
    let mut spec = small_spec(&dataset);
    spec["model"]["backbone"] = json!({"architecture": "mobilenet_v2", "alpha": 0.35, "weights": id});
    spec["input"] = json!({"height": 64, "width": 64});
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let response = server.client.delete(server.url(&format!("/v1/backbones/{id}"))).send().await.unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 409, "{body}");
    spec["model"]["backbone"]["alpha"] = json!(1.0);
    let (status, body) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 422, "weights for alpha 0.35 cannot start an alpha 1.0 model: {body}");
    assert_eq!(body["field"], "model.backbone.weights");
    spec["model"]["backbone"]["weights"] = json!("no-such-backbone");
    let (status, _) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 422);

    server.post_json(&format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()), &json!({})).await;
    let response = server.client.delete(server.url(&format!("/v1/backbones/{id}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_pretrained_mobilenet_predicts() {
    require_shared_data!();
    let server = TestServer::start().await;
    let (status, backbone) = upload_weights(
        &server,
        "architecture=mobilenet_v2&alpha=0.35&format=keras",
        weights_file("mobilenet_v2_0.35_224_imagenet.keras.safetensors"),
    )
    .await;
    assert_eq!(status, 201, "{backbone}");
    let dataset = upload_photos(&server, 8).await;
    let mut spec = small_spec(&dataset);
    spec["model"]["backbone"] = json!({"architecture": "mobilenet_v2", "alpha": 0.35, "weights": backbone["id"]});
    // Center-cropped in training and in predict alike.
    spec["input"] =
        json!({"height": 64, "width": 64, "scale": 0.00784313725490196, "offset": -1.0, "resize": "center_crop"});
    spec["split"] = json!({"validation": 0.25, "test": 0.0, "seed": 7});
    spec["phases"] = json!([{"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 1}]);
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["spec"]["input"]["resize"], "center_crop");
    let id = job["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/predict")))
        .body(vec![1, 2, 3])
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert!(status == 409 || status == 400, "{status} {body:?}");
    let job = server.wait_for_end(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let photos = real_photos("validation", 1);
    let answer = predict_photo(&server, &id, &photos[0].1).await;
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let total: f64 = predictions.iter().map(|p| p["probability"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{answer}");
    assert!(predictions[0]["probability"].as_f64() >= predictions[1]["probability"].as_f64());

    let mut files = photos.clone();
    files.push(("notes.txt".into(), b"not an image".to_vec()));
    let response = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/predict")))
        .header("content-type", "application/zip")
        .body(zip_of(&files))
        .send()
        .await
        .unwrap();
    let (status, answer) = read(response).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[2]["error"].is_string() && results[0]["predictions"].is_array(), "{answer}");

    let response = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/predict")))
        .header("content-type", "image/png")
        .body(b"not a png".to_vec())
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_image");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_pretrained_efficientnet_lite0_predicts() {
    require_shared_data!();
    let server = TestServer::start().await;
    let file = weights_file("efficientnet_lite0_imagenet.effnetlite_names.safetensors");
    // Its names are the PyTorch port's: not Keras's, and not for another architecture.
    let (status, body) = upload_weights(&server, "architecture=efficientnet_lite0&format=keras", file.clone()).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) =
        upload_weights(&server, "architecture=mobilenet_v2&format=efficientnet_pytorch", file.clone()).await;
    assert_eq!(status, 422, "{body}");
    let (status, backbone) =
        upload_weights(&server, "architecture=efficientnet_lite0&format=efficientnet_pytorch", file).await;
    assert_eq!(status, 201, "{backbone}");
    assert_eq!(backbone["tensors"], 245);
    assert_eq!(backbone["params"], 3_413_024);
    let (_, list) = server.get("/v1/backbones").await;
    let lite0 = list["architectures"].as_array().unwrap().iter().find(|a| a["name"] == "efficientnet_lite0").unwrap();
    assert_eq!(lite0["formats"], json!(["efficientnet_pytorch", "tanuki"]), "{lite0}");

    let dataset = upload_photos(&server, 8).await;
    let mut spec = small_spec(&dataset);
    spec["model"]["backbone"] = json!({"architecture": "efficientnet_lite0", "weights": backbone["id"]});
    // No scale or offset: the weights' own (x - 127) / 128.
    spec["input"] = json!({"height": 64, "width": 64, "resize": "center_crop"});
    spec["split"] = json!({"validation": 0.25, "test": 0.0, "seed": 7});
    spec["phases"] = json!([
        {"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 1},
        {"name": "top", "trainable": ["head"], "unfreeze_top_blocks": 2,
         "optimizer": {"type": "adam", "learning_rate": 0.00001}, "epochs": 1}
    ]);
    let request = json!({"model": spec["model"], "input": spec["input"], "phases": spec["phases"]});
    let (status, summary) = server.post_json("/v1/models/summary", &request).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["total_params"], 3_413_024 + 1_281);
    assert_eq!(summary["phases"][0]["trainable_params"], 1_281);
    // `top` (top_conv and its batch norm's gamma/beta) and block7a (expand, depthwise, project
    // and their batch norms' gamma/beta): 412,160 + 605,440.
    assert_eq!(summary["phases"][1]["trainable_params"], 1_281 + 412_160 + 605_440);
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    assert!(job["spec"]["input"].get("scale").is_none(), "the default is not written into the spec: {job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = server.wait_for_end(&id, Duration::from_secs(600)).await;
    assert_eq!(job["state"], "succeeded", "{job}");

    let photos = real_photos("validation", 1);
    let answer = predict_photo(&server, &id, &photos[0].1).await;
    let total: f64 = answer["predictions"].as_array().unwrap().iter().map(|p| p["probability"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{answer}");
    server.stop().await;
}
