//! The committed OpenAPI document is what the server serves.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_openapi_matches_the_server() {
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let response = server.client.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let served = response.text().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == served,
        "openapi/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --test api openapi` (or `cargo run -- openapi > openapi/openapi.json`)"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/model",
        "/v1/checkpoints/{id}/weights",
        "/healthz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    // Every reference resolves (utoipa leaves out a schema that is only named in a parameter).
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("an outside reference: {reference}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve: add it to the components in http/openapi.rs"
        );
    }
    let (status, body) = server.get("/healthz").await;
    assert_eq!((status, body), (200, serde_json::json!("ok")));
    server.stop().await;
}

fn collect_refs(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(reference)) = map.get("$ref") {
                into.push(reference.clone());
            }
            map.values().for_each(|v| collect_refs(v, into));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}
