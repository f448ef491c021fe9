//! Uploading, listing and deleting datasets, and every way an upload can be wrong.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_upload_counts_classes_and_skips_bad_files() {
    require_shared_data!();
    let server = TestServer::start().await;
    let mut files = real_photos("train", 3);
    files.push(("cats/broken.jpg".into(), b"\xff\xd8\xff\xe0 not really a jpeg".to_vec()));
    files.push(("dogs/notes.txt".into(), b"hello".to_vec()));
    let (status, body) = server.upload("pets", zip_of(&files), "application/zip").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "pets");
    assert_eq!(body["classes"], json!([{"name": "cats", "images": 3}, {"name": "dogs", "images": 3}]));
    assert_eq!(body["image_count"], 6);
    assert_eq!(body["skipped"], 2);
    let id = body["id"].as_str().unwrap();

    let (status, got) = server.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["classes"], body["classes"]);
    let (status, list) = server.get("/v1/datasets").await;
    assert_eq!(status, 200);
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_gz_and_multipart_uploads_with_a_wrapping_folder() {
    require_shared_data!();
    let server = TestServer::start().await;
    let wrapped: Vec<_> = real_photos("validation", 2).into_iter().map(|(p, b)| (format!("my_pets/{p}"), b)).collect();
    let (status, body) = server.upload("wrapped", tar_gz_of(&wrapped), "application/gzip").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["classes"], json!([{"name": "cats", "images": 2}, {"name": "dogs", "images": 2}]));

    let part = reqwest::multipart::Part::bytes(zip_of(&real_photos("train", 1))).file_name("pets.zip");
    let form = reqwest::multipart::Form::new().part("file", part);
    let response = server.client.post(server.url("/v1/datasets?name=multi")).multipart(form).send().await.unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["image_count"], 2);

    let form = reqwest::multipart::Form::new().text("other", "x");
    let response = server.client.post(server.url("/v1/datasets")).multipart(form).send().await.unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "missing_file");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archives_are_4xx_and_leave_nothing_behind() {
    require_shared_data!();
    let server = TestServer::start_with(|c| c.max_upload_bytes = 200_000).await;

    let (status, body) = server.upload("x", b"this is not an archive at all".to_vec(), "application/zip").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "not_an_archive");

    let evil = vec![("../evil.jpg".to_owned(), real_photos("train", 1).remove(0).1)];
    let (status, body) = server.upload("x", tar_gz_of_raw(&evil), "application/gzip").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "unsafe_archive_entry");
    assert!(!server.dir.path().join("data/evil.jpg").exists());

    let flat = vec![("readme.txt".to_owned(), b"no folders".to_vec())];
    let (status, body) = server.upload("x", zip_of(&flat), "application/zip").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "no_class_folders");

    // One 64 MiB entry that deflates to well under the 200 kB upload limit: a decompression bomb,
    // refused on its header's ratio before a byte of it is written.
    let mut bomb = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut bomb);
    let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    writer.start_file("cats/a.jpg", deflated).unwrap();
    std::io::Write::write_all(&mut writer, &vec![0u8; 64 << 20]).unwrap();
    writer.finish().unwrap();
    let bomb = bomb.into_inner();
    assert!(bomb.len() < 200_000);
    let (status, body) = server.upload("x", bomb, "application/zip").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "archive_too_compressed");

    let big = zip_of(&real_photos("train", 20));
    assert!(big.len() > 200_000);
    let (status, body) = server.upload("x", big, "application/zip").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "upload_too_large");

    let (status, list) = server.get("/v1/datasets").await;
    assert_eq!(status, 200);
    assert_eq!(list["datasets"], json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(server.dir.path().join("data/datasets")).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing half-written stays: {leftovers:?}");
    let uploads: Vec<_> = std::fs::read_dir(server.dir.path().join("data/uploads")).unwrap().collect();
    assert!(uploads.is_empty(), "upload temp files are removed: {uploads:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_before_it_is_read_gets_its_answer_and_the_connection_lives_on() {
    let server = TestServer::start_with(|c| c.max_upload_bytes = 200_000).await;
    let too_big = vec![0u8; 4 << 20];
    // Refused on its Content-Length before a byte is read, and (chunked, no length) when the
    // count passes the limit; and for a bad name before a byte is read. The client is still sending each
    // time: it gets the answer, not a broken pipe, and its next requests reuse the connection.
    let chunked = || {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = too_big.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    };
    let post = |query: &str| {
        server.client.post(server.url(&format!("/v1/datasets?{query}"))).header("content-type", "application/zip")
    };
    let requests = [
        (post("name=x").body(too_big.clone()), 413, "upload_too_large"),
        (post("name=x").body(chunked()), 413, "upload_too_large"),
        (post("name=%20").body(chunked()), 400, "invalid_name"),
    ];
    for (request, status, code) in requests {
        let response = request.send().await.expect("the answer, not a broken pipe");
        assert!(response.headers().get("connection").is_none(), "{:?}", response.headers());
        let (got, body) = read(response).await;
        assert_eq!((got, body["code"].as_str().unwrap()), (status, code), "{body}");
        for _ in 0..3 {
            let (status, _) = server.get("/v1/datasets").await;
            assert_eq!(status, 200);
        }
    }

    // A client that waits for `100 Continue` (curl does for large bodies) is not asked for the
    // body: it gets the 413 at once, and is told the connection closes.
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/datasets?name=x HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/zip\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        too_big.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(!answer.contains("100 continue"), "{answer}");
    server.stop().await;
}

/// A tar.gz whose entry names are written verbatim (the tar crate's builder refuses `..`).
fn tar_gz_of_raw(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tar_with_hard_links_imports_each_link_as_a_copy() {
    require_shared_data!();
    // What `tar` writes for a file stored twice (a photo in two classes' folders, say): the
    // second is a hard link to the first.
    let server = TestServer::start().await;
    let photos = real_photos("train", 2);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in &photos {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Link);
    link.set_size(0);
    link.set_mode(0o644);
    builder.append_link(&mut link, "dogs/same-as-a-cat.jpg", &photos[0].0).unwrap();
    let (status, body) = server.upload("linked", builder.into_inner().unwrap(), "application/x-tar").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["classes"], json!([{"name": "cats", "images": 2}, {"name": "dogs", "images": 3}]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_and_a_dataset_in_use_cannot_be_deleted() {
    require_shared_data!();
    // No workers: the job stays queued.
    let server = TestServer::start_with(|c| c.workers = 0).await;
    for path in [
        "/v1/datasets/nope",
        "/v1/jobs/nope",
        "/v1/jobs/nope/events",
        "/v1/jobs/nope/checkpoints",
        "/v1/checkpoints/nope/weights",
        "/v1/nothing",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let response = server.client.delete(server.url("/v1/datasets/nope")).send().await.unwrap();
    assert_eq!(read(response).await.0, 404);

    let dataset = upload_photos(&server, 2).await;
    let (status, job) = server.post_json("/v1/jobs", &small_spec(&dataset)).await;
    assert_eq!(status, 201, "{job}");
    let response = server.client.delete(server.url(&format!("/v1/datasets/{dataset}"))).send().await.unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "dataset_in_use");

    let (status, _) = server.post_json(&format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(status, 200);
    let response = server.client.delete(server.url(&format!("/v1/datasets/{dataset}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert!(!server.dir.path().join("data/datasets").join(&dataset).exists());
    server.stop().await;
}
