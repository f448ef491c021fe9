//! Headless Chromium driven over the DevTools protocol (a minimal WebSocket client: text frames
//! only, which is all the protocol uses), so a test can wait on the live page rather than guess
//! a fixed delay.
//!
//! Chromium is `/usr/bin/chromium` (Debian's package; `.ci/run` installs it) or `$TANUKI_CHROMIUM`.
//! Without it a browser test fails, unless `TANUKI_SKIP_BROWSER_TESTS=1` says to skip it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    socket: BufReader<TcpStream>,
    next_id: u64,
}

/// The Chromium binary, `None` when absent and skipping was asked for; panics otherwise.
pub fn chromium_or_skip() -> Option<PathBuf> {
    let path =
        std::env::var_os("TANUKI_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("TANUKI_SKIP_BROWSER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipping the browser test: {} is missing and TANUKI_SKIP_BROWSER_TESTS=1", path.display());
        return None;
    }
    panic!(
        "the browser test needs Chromium at {} (Debian: apt-get install chromium; .ci/run installs it) \
         or TANUKI_CHROMIUM=<path>; set TANUKI_SKIP_BROWSER_TESTS=1 to skip it locally",
        path.display()
    );
}

impl Browser {
    /// Starts headless Chromium on a blank page and attaches to that page.
    pub async fn launch(binary: &std::path::Path) -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it picked into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = wait_until(Duration::from_secs(30), "Chromium's DevTools port", || async {
            std::fs::read_to_string(&port_file).ok()?.lines().next()?.trim().parse().ok()
        })
        .await;
        let targets: Value =
            reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.unwrap().json().await.unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
        let ws_url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let path = ws_url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let mut socket = BufReader::new(stream);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(socket.read_u8().await.expect("handshake answer"));
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Self { _child: child, _profile: profile, socket, next_id: 1 }
    }

    /// Sends one command and returns its `result`, skipping the events that come in between.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string()).await;
        loop {
            let message: Value = serde_json::from_str(&self.read_text().await).expect("DevTools sends JSON");
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates a JavaScript expression and returns its value as JSON.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await;
        result["result"]["value"].clone()
    }

    pub async fn screenshot_png(&mut self) -> Vec<u8> {
        use base64::Engine;
        let result = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        base64::engine::general_purpose::STANDARD.decode(result["data"].as_str().unwrap()).unwrap()
    }

    async fn send_text(&mut self, text: &str) {
        // A client frame: FIN + text, masked (RFC 6455 requires it of clients).
        let payload = text.as_bytes();
        let mask = [0x5a, 0x17, 0xc3, 0x08];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.socket.get_mut().write_all(&frame).await.unwrap();
    }

    /// Reads one whole text message (joining continuation frames).
    async fn read_text(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let first = self.socket.read_u8().await.expect("DevTools frame");
            let second = self.socket.read_u8().await.unwrap();
            let len = match second & 0x7f {
                126 => u64::from(self.socket.read_u16().await.unwrap()),
                127 => self.socket.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0; len as usize];
            self.socket.read_exact(&mut payload).await.unwrap();
            let opcode = first & 0x0f;
            if opcode == 0x9 || opcode == 0xa {
                continue; // ping / pong
            }
            assert_ne!(opcode, 0x8, "DevTools closed the connection");
            message.extend_from_slice(&payload);
            if first & 0x80 != 0 {
                return String::from_utf8(message).expect("text frame");
            }
        }
    }
}

/// Polls `check` every 100 ms until it gives a value, or panics after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
