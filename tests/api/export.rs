//! ONNX export, checked by an independent runtime (tract): for every architecture, the exported
//! model's probabilities on real photos equal `/predict`'s.

use std::time::Duration;

use serde_json::{json, Value};
use tract_onnx::prelude::*;

use crate::common::*;

fn weights_file(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/weights").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn upload_weights(server: &TestServer, query: &str, file: &str) -> String {
    let response = server
        .client
        .post(server.url(&format!("/v1/backbones?{query}")))
        .header("content-type", "application/octet-stream")
        .body(weights_file(file))
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// A job per architecture (and per head and preprocessing kind), as small as trains in seconds.
fn cases(dataset: &str, mobilenet_keras: &str, mobilenet_torchvision: &str, lite0: &str) -> Vec<(&'static str, Value)> {
    let head = |epochs: u32| json!([{"name": "head", "trainable": ["head"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": epochs}]);
    let with = |model: Value, input: Value, phases: Value| {
        let mut spec = small_spec(dataset);
        spec["model"] = model;
        spec["input"] = input;
        spec["phases"] = phases;
        spec["split"] = json!({"validation": 0.25, "test": 0.0, "seed": 7});
        spec
    };
    let small_cnn = |units: u32| json!({"backbone": {"architecture": "small_cnn", "widths": [8, 16]}, "head": {"pooling": "avg", "dropout": 0.2, "units": units}});
    let pretrained =
        |backbone: Value| json!({"backbone": backbone, "head": {"pooling": "avg", "dropout": 0.2, "units": 1}});
    let imagenet = json!({"height": 64, "width": 64, "resize": "center_crop",
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]});
    vec![
        // Both phases, the second training every weight (batch norm's moving statistics stay).
        ("small_cnn, sigmoid head", small_spec(dataset)),
        ("small_cnn, softmax head, mean/std", with(small_cnn(2), imagenet.clone(), head(1))),
        (
            "mobilenet_v2 0.35, Keras weights",
            with(
                pretrained(json!({"architecture": "mobilenet_v2", "alpha": 0.35, "weights": mobilenet_keras})),
                json!({"height": 64, "width": 64, "scale": 0.00784313725490196, "offset": -1.0, "resize": "center_crop"}),
                head(1),
            ),
        ),
        (
            "mobilenet_v2 1.0, torchvision weights",
            with(
                pretrained(json!({"architecture": "mobilenet_v2", "alpha": 1.0, "weights": mobilenet_torchvision})),
                imagenet,
                head(1),
            ),
        ),
        (
            "efficientnet_lite0",
            with(
                pretrained(json!({"architecture": "efficientnet_lite0", "weights": lite0})),
                json!({"height": 64, "width": 64}),
                head(1),
            ),
        ),
        (
            "xception, random weights",
            with(
                pretrained(json!({"architecture": "xception"})),
                json!({"height": 71, "width": 71, "scale": 0.00784313725490196, "offset": -1.0}),
                head(1),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_architecture_exports_to_onnx_that_tract_runs_as_predict_does() {
    require_shared_data!();
    let server = TestServer::start().await;
    let dataset = upload_photos(&server, 6).await;
    let keras = upload_weights(
        &server,
        "architecture=mobilenet_v2&alpha=0.35&format=keras",
        "mobilenet_v2_0.35_224_imagenet.keras.safetensors",
    )
    .await;
    let torchvision = upload_weights(
        &server,
        "architecture=mobilenet_v2&alpha=1.0&format=torchvision",
        "mobilenet_v2_1.0_224_imagenet.torchvision.safetensors",
    )
    .await;
    let lite0 = upload_weights(
        &server,
        "architecture=efficientnet_lite0&format=efficientnet_pytorch",
        "efficientnet_lite0_imagenet.effnetlite_names.safetensors",
    )
    .await;

    let mut jobs = Vec::new();
    for (case, spec) in cases(&dataset, &keras, &torchvision, &lite0) {
        let (status, job) = server.post_json("/v1/jobs", &spec).await;
        assert_eq!(status, 201, "{case}: {job}");
        let id = job["id"].as_str().unwrap().to_owned();
        if jobs.is_empty() {
            // Nothing to export before the first checkpoint.
            let (status, body) = server.get(&format!("/v1/jobs/{id}/export?format=onnx")).await;
            assert!(status == 409 || status == 200, "{status} {body}");
        }
        jobs.push((case, id, spec));
    }

    let photos = real_photos("validation", 2);
    let images: Vec<Vec<u8>> = photos.iter().map(|(_, bytes)| bytes.clone()).collect();
    for (case, id, spec) in &jobs {
        let job = server.wait_for_end(id, Duration::from_secs(900)).await;
        assert_eq!(job["state"], "succeeded", "{case}: {job}");

        let response =
            server.client.get(server.url(&format!("/v1/jobs/{id}/export?format=onnx"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "{case}");
        assert_eq!(response.headers()["content-type"], "application/onnx");
        let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
        assert!(disposition.starts_with("attachment;") && disposition.ends_with(".onnx\""), "{disposition}");
        let onnx = response.bytes().await.unwrap().to_vec();

        let (status, predicted) = predict_zip(&server, id, &photos).await;
        assert_eq!(status, 200, "{case}: {predicted}");
        let checkpoint = predicted["checkpoint_id"].as_str().unwrap().to_owned();

        // The metadata: what a deployment needs to feed the model.
        let proto = tract_onnx::onnx().proto_model_for_read(&mut onnx.as_slice()).unwrap();
        let meta = |key: &str| {
            proto
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("{case}: no {key}"))
                .value
                .clone()
        };
        assert_eq!(meta("tanuki.classes"), r#"["cats","dogs"]"#, "{case}");
        assert_eq!(meta("tanuki.checkpoint_id"), checkpoint, "{case}: the default is predict's checkpoint");
        assert_eq!(meta("tanuki.architecture"), spec["model"]["backbone"]["architecture"].as_str().unwrap());
        let preprocessing: Value = serde_json::from_str(&meta("tanuki.preprocessing")).unwrap();
        assert_eq!(preprocessing["height"], spec["input"]["height"], "{case}: {preprocessing}");
        assert_eq!(preprocessing["width"], spec["input"]["width"], "{case}: {preprocessing}");
        let resize = spec["input"].get("resize").cloned().unwrap_or(json!("stretch"));
        assert_eq!(preprocessing["resize"], resize, "{case}: {preprocessing}");
        assert_eq!(
            (&preprocessing["interpolation"], &preprocessing["half_pixel_centers"], &preprocessing["antialias"]),
            (&json!("bilinear"), &json!(true), &json!(false)),
            "{case}: {preprocessing}"
        );
        if spec["input"].get("mean").is_some() {
            assert_eq!(preprocessing["mean"], json!([0.485f32, 0.456f32, 0.406f32]), "{case}: {preprocessing}");
            assert!(preprocessing["std"].is_array(), "{case}: {preprocessing}");
        } else {
            assert!(
                preprocessing["scale"].is_number() && preprocessing["offset"].is_number(),
                "{case}: {preprocessing}"
            );
        }
        let graph = proto.graph.as_ref().unwrap();
        assert_eq!(graph.input.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["input"]);
        assert_eq!(graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["probabilities"]);

        // tract runs the photos, preprocessed as the metadata says (tanuki's own preprocessing).
        let job_spec: tanuki::train::JobSpec = serde_json::from_value(job["spec"].clone()).unwrap();
        let (h, w) = (job_spec.input.height as usize, job_spec.input.width as usize);
        let mut pixels = Vec::new();
        for image in &images {
            pixels.extend(tanuki::train::preprocess(&job_spec.model, &job_spec.input, image).unwrap());
        }
        let n = images.len();
        let runnable = tract_onnx::onnx()
            .model_for_read(&mut onnx.as_slice())
            .unwrap()
            .with_input_fact(0, f32::fact([n, 3, h, w]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let input: Tensor = tract_ndarray::Array4::from_shape_vec((n, 3, h, w), pixels).unwrap().into();
        let outputs = runnable.run(tvec!(input.into())).unwrap();
        let probabilities = outputs[0].to_array_view::<f32>().unwrap();
        assert_eq!(probabilities.shape(), [n, 2], "{case}");

        let mut max_diff = 0f64;
        for (i, result) in predicted["results"].as_array().unwrap().iter().enumerate() {
            for p in result["predictions"].as_array().unwrap() {
                let column = if p["class"] == "cats" { 0 } else { 1 };
                let ours = p["probability"].as_f64().unwrap();
                max_diff = max_diff.max((ours - probabilities[[i, column]] as f64).abs());
            }
        }
        eprintln!("{case}: {} bytes of ONNX, max |tract - predict| = {max_diff:.2e}", onnx.len());
        assert!(max_diff < 1e-4, "{case}: max |tract - predict| = {max_diff}");
    }

    // A named checkpoint, and the errors.
    let (_, id, _) = &jobs[0];
    let (_, list) = server.get(&format!("/v1/jobs/{id}/checkpoints")).await;
    let first = list["checkpoints"][0]["id"].as_str().unwrap().to_owned();
    let response = server
        .client
        .get(server.url(&format!("/v1/jobs/{id}/export?format=onnx&checkpoint={first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let onnx = response.bytes().await.unwrap();
    let proto = tract_onnx::onnx().proto_model_for_read(&mut onnx.as_ref()).unwrap();
    assert!(proto.metadata_props.iter().any(|p| p.key == "tanuki.checkpoint_id" && p.value == first));
    for (query, status, code) in [
        ("", 400, "invalid_query"),
        ("?format=tflite", 400, "invalid_query"),
        ("?format=onnx&checkpoint=nope", 404, "not_found"),
    ] {
        let (got, body) = server.get(&format!("/v1/jobs/{id}/export{query}")).await;
        assert_eq!((got, body["code"].as_str().unwrap()), (status, code), "{query}: {body}");
        let named = if status == 400 { "format" } else { "nope" };
        assert!(body["detail"].as_str().unwrap().contains(named), "{query}: {body}");
    }
    let (got, body) = server.get("/v1/jobs/nope/export?format=onnx").await;
    assert_eq!(got, 404, "{body}");
    server.stop().await;
}

async fn predict_zip(server: &TestServer, id: &str, photos: &[(String, Vec<u8>)]) -> (u16, Value) {
    let response = server
        .client
        .post(server.url(&format!("/v1/jobs/{id}/predict")))
        .header("content-type", "application/zip")
        .body(zip_of(photos))
        .send()
        .await
        .unwrap();
    read(response).await
}
