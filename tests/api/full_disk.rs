//! A full disk: the data directory on a small tmpfs the test mounts (it must run as root, as CI
//! does). An upload that does not fit is 507 and leaves nothing behind; a checkpoint that cannot
//! be written ends the job `failed` with `insufficient_storage`; the server keeps serving; the
//! database passes `PRAGMA integrity_check` afterwards.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{read, real_photos, require_shared_data, small_spec, zip_of, TestServer};

/// A tmpfs of `size_mib` mounted on a fresh temp directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (the test is skipped, saying why) where this process may not mount, unless
    /// `TANUKI_REQUIRE_TMPFS=1` (which `.ci/run` sets) makes that a failure.
    fn mount(size_mib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Self { dir });
        }
        let required = std::env::var("TANUKI_REQUIRE_TMPFS").is_ok_and(|v| v == "1");
        assert!(!required, "cannot mount a tmpfs and TANUKI_REQUIRE_TMPFS=1 (the test needs root)");
        eprintln!("skipping: mounting a tmpfs needs root (set TANUKI_REQUIRE_TMPFS=1 to fail instead)");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the server's last file handles may still be closing.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn available(path: &Path) -> u64 {
    tanuki::disk::space(path).unwrap().available_bytes
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Bytes that start like a JPEG (so extraction writes them) and do not compress.
fn fake_jpeg(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while bytes.len() < len {
        // xorshift64: cheap incompressible filler.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Sends the head of an upload declaring `length` bytes, with `Expect: 100-continue`, and reads
/// the answer that comes instead of `100 Continue`.
async fn head_only_upload(server: &TestServer, length: u64) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/datasets?name=declared HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/zip\r\n\
         Content-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    (status, serde_json::from_str(body).unwrap())
}

async fn upload_streamed(server: &TestServer, body: Vec<u8>) -> (u16, Value) {
    // Chunks without a Content-Length: the server only finds out by writing.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let response = server
        .client
        .post(server.url("/v1/datasets?name=streamed"))
        .header("content-type", "application/zip")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("the server answers before reading the rest");
    read(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_uploads_fails_the_job_and_loses_nothing() {
    require_shared_data!();
    let Some(tmpfs) = Tmpfs::mount(64) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    let stored_files = || {
        let mut files = files_under(&data.join("datasets"));
        files.extend(files_under(&data.join("uploads")));
        files.extend(files_under(&data.join("checkpoints")));
        files
    };

    // Declared too large for the free space: refused before a byte is read (as a client that
    // waits for `100 Continue` sees it: it sends the head only).
    let free = available(&data);
    let (status, problem) = head_only_upload(&server, free + (1 << 20)).await;
    assert_eq!(status, 507, "{problem}");
    assert_eq!(problem["code"], "insufficient_storage");
    assert!(problem["detail"].as_str().unwrap().contains("free"), "{problem}");

    // Streamed without a length: the write runs out of room.
    let (status, problem) = upload_streamed(&server, fake_jpeg(free as usize + (4 << 20), 1)).await;
    assert_eq!(status, 507, "{problem}");
    assert_eq!(problem["code"], "insufficient_storage");

    // An archive that fits, whose files do not fit beside it: extraction runs out of room.
    let free = available(&data);
    let entries: Vec<(String, Vec<u8>)> = (0..((free * 6 / 10) >> 20))
        .map(|i| (format!("{}/{i}.jpg", ["cats", "dogs"][i as usize % 2]), fake_jpeg(1 << 20, i + 2)))
        .collect();
    let (status, problem) = server.upload("unpacked", zip_of(&entries), "application/zip").await;
    assert_eq!(status, 507, "{problem}");
    assert_eq!(problem["code"], "insufficient_storage");

    let (_, list) = server.get("/v1/datasets").await;
    assert_eq!(list["datasets"], json!([]), "no dataset was stored");
    assert_eq!(stored_files(), Vec::<PathBuf>::new(), "nothing half-written stays");
    assert!(available(&data) + (2 << 20) >= free, "the room taken by the failed uploads is free again");

    // A real dataset, then a disk that holds the model's weights but not its optimizer state.
    let (status, dataset) = server.upload("photos", zip_of(&real_photos("train", 6)), "application/zip").await;
    assert_eq!(status, 201, "{dataset}");
    let mut spec = small_spec(dataset["id"].as_str().unwrap());
    // 2.4 M parameters: a 9.4 MB weights file and 19 MB of Adam state per checkpoint.
    spec["input"]["height"] = json!(8);
    spec["input"]["width"] = json!(8);
    spec["model"]["backbone"]["widths"] = json!([256, 1024]);
    spec["phases"] = json!([{"name": "all", "trainable": ["all"], "optimizer": {"type": "adam", "learning_rate": 0.001}, "epochs": 2}]);
    let filler_len = available(&data).saturating_sub(14 << 20);
    let filler = tmpfs.path().join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![1u8; 1 << 20];
        for _ in 0..filler_len >> 20 {
            file.write_all(&block).unwrap();
        }
        file.sync_all().unwrap();
    }
    let (status, job) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let job = server.wait_for_end(&job_id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error_code"], "insufficient_storage", "{job}");
    assert!(job["error"].as_str().unwrap().contains("disk is full"), "{job}");
    let (_, checkpoints) = server.get(&format!("/v1/jobs/{job_id}/checkpoints")).await;
    assert_eq!(checkpoints["checkpoints"], json!([]), "{checkpoints}");
    let leftovers: Vec<_> = stored_files().into_iter().filter(|f| !f.starts_with(data.join("datasets"))).collect();
    assert_eq!(leftovers, Vec::<PathBuf>::new(), "no half-written checkpoint stays");

    // Still serving, and saying how full the disk is.
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let disk_free = ready["disk"]["available_bytes"].as_u64().unwrap();
    assert!(disk_free < 20 << 20, "{ready}");
    assert_eq!(ready["disk"]["total_bytes"].as_u64().unwrap(), 64 << 20, "{ready}");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\ntanuki_disk_available_bytes "), "{metrics}");
    assert!(metrics.contains(&format!("\ntanuki_disk_total_bytes {}\n", 64u64 << 20)), "{metrics}");

    // With room again, the same job trains.
    std::fs::remove_file(&filler).unwrap();
    let (status, retry) = server.post_json("/v1/jobs", &spec).await;
    assert_eq!(status, 201, "{retry}");
    let retry = server.wait_for_end(retry["id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(retry["state"], "succeeded", "{retry}");
    server.stop().await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("tanuki.sqlite3").display())).await.unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check").fetch_one(&pool).await.unwrap();
    assert_eq!(check, "ok");
    pool.close().await;
}
