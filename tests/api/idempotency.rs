//! `Idempotency-Key` on `POST /v1/jobs` and `POST /v1/datasets`: a retry gets the first answer
//! and creates nothing; another request under the same key is 422; a concurrent one is 409.

use std::time::Duration;

use serde_json::Value;

use crate::common::{self, read, real_photos, require_shared_data, small_spec, zip_of, TestServer};

async fn post_job(server: &TestServer, key: &str, spec: &Value) -> (u16, Value, Option<String>) {
    let response =
        server.client.post(server.url("/v1/jobs")).header("Idempotency-Key", key).json(spec).send().await.unwrap();
    let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(response).await;
    (status, body, replayed)
}

async fn post_dataset(server: &TestServer, key: &str, name: &str, archive: Vec<u8>) -> (u16, Value, Option<String>) {
    let response = server
        .client
        .post(server.url(&format!("/v1/datasets?name={name}")))
        .header("Idempotency-Key", key)
        .header("content-type", "application/zip")
        .body(archive)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = read(response).await;
    (status, body, replayed)
}

#[tokio::test]
async fn a_retried_job_submission_gets_the_first_answer_and_queues_nothing() {
    require_shared_data!();
    // No worker: the jobs stay queued, so the first answer and the job's state now differ only
    // where the replay must not follow the job.
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let dataset = common::upload_photos(&server, 4).await;
    let spec = small_spec(&dataset);

    let (status, first, replayed) = post_job(&server, "job-key-1", &spec).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(replayed, None);
    // The same spec spelled differently (a default made explicit) is the same request.
    let mut respelled = spec.clone();
    respelled["phases"][0]["on_divergence"] = Value::String("fail".into());
    for retry in [&spec, &respelled] {
        let (status, again, replayed) = post_job(&server, "job-key-1", retry).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again, first, "the replay is the first answer");
        assert_eq!(replayed.as_deref(), Some("true"));
    }
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");

    // The same key with another spec is refused and queues nothing.
    let mut other = spec.clone();
    other["name"] = Value::String("another".into());
    let (status, problem, _) = post_job(&server, "job-key-1", &other).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert_eq!(problem["field"], "Idempotency-Key");
    // Keys are per operation and per key: another key queues another job.
    let (status, second, _) = post_job(&server, "job-key-2", &other).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(second["id"], first["id"]);

    // A failed request keeps nothing: a retry under its key, now valid, runs.
    let mut invalid = spec.clone();
    invalid["batch_size"] = Value::from(0);
    let (status, problem, _) = post_job(&server, "job-key-3", &invalid).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "invalid_spec");
    let (status, third, replayed) = post_job(&server, "job-key-3", &spec).await;
    assert_eq!(status, 201, "{third}");
    assert_eq!(replayed, None);
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");

    // Keys that cannot be stored as sent are refused before anything happens.
    for bad in ["", &"k".repeat(256), "two words"] {
        let (status, problem, _) = post_job(&server, bad, &spec).await;
        assert_eq!(status, 400, "{bad:?}: {problem}");
        assert_eq!(problem["code"], "invalid_idempotency_key");
    }
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_upload_gets_the_first_dataset_and_stores_nothing() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let archive = zip_of(&real_photos("train", 3));

    let (status, first, _) = post_dataset(&server, "upload-1", "photos", archive.clone()).await;
    assert_eq!(status, 201, "{first}");
    let (status, again, replayed) = post_dataset(&server, "upload-1", "photos", archive.clone()).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again, first);
    assert_eq!(replayed.as_deref(), Some("true"));

    // Another archive, or the same archive under another name, is another request.
    let (status, problem, _) = post_dataset(&server, "upload-1", "photos", zip_of(&real_photos("train", 2))).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("idempotency_key_reused")), "{problem}");
    let (status, problem, _) = post_dataset(&server, "upload-1", "renamed", archive.clone()).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("idempotency_key_reused")), "{problem}");

    let (_, list) = server.get("/v1/datasets").await;
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1, "{list}");
    let stored = std::fs::read_dir(server.dir.path().join("data/datasets")).unwrap().count();
    assert_eq!(stored, 1, "one dataset folder");
    let leftovers = std::fs::read_dir(server.dir.path().join("data/uploads")).unwrap().count();
    assert_eq!(leftovers, 0, "no upload file outlives its request");

    // A refused archive frees its key at once.
    let (status, problem, _) = post_dataset(&server, "upload-2", "photos", b"not an archive".to_vec()).await;
    assert_eq!(status, 400, "{problem}");
    let (status, created, _) = post_dataset(&server, "upload-2", "photos", archive).await;
    assert_eq!(status, 201, "{created}");
    assert_ne!(created["id"], first["id"]);
    server.stop().await;
}

#[tokio::test]
async fn a_second_request_while_the_first_is_being_handled_is_409() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.workers = 0).await;
    let archive = zip_of(&real_photos("train", 2));

    // The first upload sends half its body and waits.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let (head, tail) = archive.split_at(archive.len() / 2);
    sender.send(Ok(head.to_vec())).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let first = server
        .client
        .post(server.url("/v1/datasets?name=slow"))
        .header("Idempotency-Key", "slow-upload")
        .header("content-type", "application/zip")
        .body(body)
        .send();
    let first = tokio::spawn(first);
    // The key is claimed before the body is read: once the upload file exists, it is held.
    let uploads = server.dir.path().join("data/uploads");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&uploads).unwrap().count() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the first upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, problem, _) = post_dataset(&server, "slow-upload", "slow", archive.clone()).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "idempotency_key_in_use");
    sender.send(Ok(tail.to_vec())).await.unwrap();
    drop(sender);
    let (status, created) = read(first.await.unwrap().unwrap()).await;
    assert_eq!(status, 201, "{created}");
    let (status, replay, replayed) = post_dataset(&server, "slow-upload", "slow", archive).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")), "{replay}");
    assert_eq!(replay, created);
    server.stop().await;
}

#[tokio::test]
async fn after_a_crash_a_key_names_what_it_created_or_is_free_again() {
    require_shared_data!();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let server = TestServer::start_with(|c| {
        c.workers = 0;
        c.data_dir = data_dir.clone();
    })
    .await;
    let dataset = common::upload_photos(&server, 3).await;
    let spec = small_spec(&dataset);
    let (status, first, _) = post_job(&server, "created-then-crashed", &spec).await;
    assert_eq!(status, 201, "{first}");
    server.stop().await;

    // As a crash would leave them: one key whose job was created but whose answer was never
    // recorded, and one reserved by a request that died before creating anything.
    let url = format!("sqlite://{}", data_dir.join("tanuki.sqlite3").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE idempotency_keys SET status = NULL, response = NULL").execute(&pool).await.unwrap();
    let reserved = |key: &'static str, at: chrono::DateTime<chrono::Utc>| {
        sqlx::query(
            "INSERT INTO idempotency_keys (operation, key, token, created_at) VALUES ('create_job', ?, 'gone', ?)",
        )
        .bind(key)
        .bind(at)
    };
    reserved("died-early", chrono::Utc::now()).execute(&pool).await.unwrap();
    pool.close().await;

    let server = TestServer::start_with(|c| {
        c.workers = 0;
        c.data_dir = data_dir.clone();
    })
    .await;
    let (status, again, replayed) = post_job(&server, "created-then-crashed", &spec).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")), "{again}");
    assert_eq!(again["id"], first["id"], "the job the key created, not a new one");
    let mut other = spec.clone();
    other["name"] = Value::String("another".into());
    let (status, problem, _) = post_job(&server, "created-then-crashed", &other).await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("idempotency_key_reused")), "{problem}");
    let (status, created, replayed) = post_job(&server, "died-early", &spec).await;
    assert_eq!((status, replayed), (201, None), "a key that created nothing is free after a restart: {created}");
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{list}");

    // While the server runs: a key held for over an hour by a request that never answered is
    // taken over; one held for a moment is still in flight.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    reserved("abandoned", chrono::Utc::now() - chrono::TimeDelta::hours(2)).execute(&pool).await.unwrap();
    reserved("in-flight", chrono::Utc::now()).execute(&pool).await.unwrap();
    pool.close().await;
    let (status, taken, _) = post_job(&server, "abandoned", &spec).await;
    assert_eq!(status, 201, "{taken}");
    let (status, problem, _) = post_job(&server, "in-flight", &spec).await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("idempotency_key_in_use")), "{problem}");
    server.stop().await;
}
