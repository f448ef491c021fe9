//! The command-line client, run as a user runs it (the built binary) against a real server: a
//! folder of real photos uploaded, a two-phase job submitted and followed, a connection cut
//! mid-follow, a job that fails, a spec that is wrong.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::common::{real_photos, require_shared_data, small_spec, TestServer};

/// `tanuki ARGS… --url URL`, with its exit status, standard output and standard error.
async fn tanuki(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tanuki"))
        .args(args)
        .args(["--url", url])
        .env_remove("TANUKI_TOKEN")
        .output()
        .await
        .expect("the client runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// A folder of class folders of real photos.
fn photo_folder(dir: &Path, per_class: usize) -> std::path::PathBuf {
    let root = dir.join("photos");
    for (path, bytes) in real_photos("train", per_class) {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    root
}

/// Uploads a folder of `per_class` real photos of each class through the client, as `photos`.
async fn upload_photo_folder(url: &str, work: &Path, per_class: usize) -> std::path::PathBuf {
    let folder = photo_folder(work, per_class);
    let (code, out, err) = tanuki(url, &["datasets", "upload", folder.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    folder
}

fn write_spec(dir: &Path, name: &str, spec: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_a_folder_then_submit_and_follow_a_job_by_dataset_name() {
    require_shared_data!();
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let folder = photo_folder(work.path(), 8);

    let (code, out, err) =
        tanuki(&server.base, &["datasets", "upload", folder.to_str().unwrap(), "--name", "pets"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("16 images"), "{out}");
    assert!(out.contains("cats") && out.contains("dogs"), "{out}");
    let (code, out, _) = tanuki(&server.base, &["datasets", "list", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["datasets"][0]["name"], "pets");

    // The spec names the dataset by its name.
    let spec = write_spec(work.path(), "spec.json", &small_spec("pets"));
    let (code, out, err) = tanuki(&server.base, &["jobs", "submit", &spec, "--follow"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for epoch in ["head epoch 1/2:", "head epoch 2/2:", "fine_tune epoch 1/1:"] {
        assert_eq!(out.matches(epoch).count(), 1, "{epoch:?} once in:\n{out}");
    }
    assert!(out.contains("job succeeded: test loss"), "{out}");

    let (code, out, _) = tanuki(&server.base, &["jobs", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
    let job_id = out.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let weights = work.path().join("final.safetensors");
    let (code, out, err) = tanuki(&server.base, &["jobs", "weights", &job_id, "-o", weights.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(safetensors::SafeTensors::deserialize(&std::fs::read(&weights).unwrap()).is_ok());
    let image = folder.join("cats").read_dir().unwrap().next().unwrap().unwrap().path();
    let (code, out, err) = tanuki(&server.base, &["jobs", "predict", &job_id, image.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cats") && out.contains("dogs") && out.contains("PROBABILITY"), "{out}");
    let (code, out, err) = tanuki(&server.base, &["models", "summary", &spec]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backbone.block1.conv") && out.contains("phase fine_tune:"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_or_a_wrong_spec_exits_non_zero_saying_why() {
    require_shared_data!();
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    upload_photo_folder(&server.base, work.path(), 4).await;

    let mut wrong = small_spec("photos");
    wrong["phases"][0]["epochs"] = json!(0);
    let spec = write_spec(work.path(), "wrong.json", &wrong);
    let (code, out, err) = tanuki(&server.base, &["jobs", "submit", &spec]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("422") && err.contains("field `phases[0].epochs`"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");

    let mut diverging = small_spec("photos");
    diverging["phases"] = json!([{"name": "boom", "trainable": ["all"], "optimizer": {"type": "sgd", "learning_rate": 1e35}, "epochs": 3}]);
    let spec = write_spec(work.path(), "diverging.json", &diverging);
    let (code, out, err) = tanuki(&server.base, &["jobs", "submit", &spec, "--follow"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("failed") && err.contains("finite"), "{err}");

    let (code, _, err) = tanuki(&server.base, &["jobs", "show", "no-such-job"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = tanuki("http://127.0.0.1:9", &["jobs", "list"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    server.stop().await;
}

/// A TCP proxy whose open connections can all be cut at once.
struct Proxy {
    url: String,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn to(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                accepted.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Self { url, connections }
    }

    /// Drops every open connection; returns how many there were.
    fn cut(&self) -> usize {
        let open: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        let count = open.iter().filter(|c| !c.is_finished()).count();
        open.iter().for_each(|c| c.abort());
        count
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_mid_follow_resumes_without_printing_anything_twice() {
    require_shared_data!();
    let server = TestServer::start().await;
    let proxy = Proxy::to(&server.base).await;
    let work = tempfile::tempdir().unwrap();
    upload_photo_folder(&proxy.url, work.path(), 8).await;
    let mut spec = small_spec("photos");
    // Long enough that the stream is still live when the first epoch's line is read.
    spec["phases"][0]["epochs"] = json!(20);
    let spec = write_spec(work.path(), "spec.json", &spec);

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tanuki"))
        .args(["jobs", "submit", &spec, "--follow", "--url", &proxy.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut out = String::new();
    let mut cuts = 0;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await.unwrap().unwrap() {
        if line.starts_with("head epoch ") && cuts < 2 {
            // After the first two epochs: the stream breaks, the client reconnects (the second
            // cut may find the job already done, the replay already read).
            cuts += proxy.cut();
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = child.wait().await.unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await.unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(cuts >= 1, "the follow's connection was cut while it was open");
    for epoch in (1..=20).map(|e| format!("head epoch {e}/20:")).chain(["fine_tune epoch 1/1:".to_owned()]) {
        assert_eq!(out.matches(&epoch).count(), 1, "{epoch:?} once in:\n{out}");
    }
    assert_eq!(out.matches("job succeeded").count(), 1, "{out}");
    assert_eq!(out.matches("phase head:").count(), 1, "{out}");
    server.stop().await;
}
