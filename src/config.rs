//! Command-line flags and environment variables (`tanuki --help` lists them all).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tanuki", version, about = "A training-job service for transfer learning and fine-tuning")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Print the OpenAPI document (JSON) and exit.
    Openapi,
}

/// Everything the service needs to start.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANUKI_ADDR", default_value = "127.0.0.1:8080", global = true)]
    pub addr: SocketAddr,
    /// Directory holding the SQLite database, datasets and checkpoints.
    #[arg(long, env = "TANUKI_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// Number of jobs trained at once (0 runs the API without training anything).
    #[arg(long, env = "TANUKI_WORKERS", default_value_t = 1, global = true)]
    pub workers: usize,
    /// Largest accepted dataset upload, in bytes (larger ones get 413).
    #[arg(long, env = "TANUKI_MAX_UPLOAD_BYTES", default_value_t = 4 << 30, global = true)]
    pub max_upload_bytes: u64,
    /// Largest total size an archive may unpack to, in bytes.
    #[arg(long, env = "TANUKI_MAX_UNPACKED_BYTES", default_value_t = 16 << 30, global = true)]
    pub max_unpacked_bytes: u64,
    /// Largest decoded image accepted, in pixels (width × height); larger ones are skipped.
    #[arg(long, env = "TANUKI_MAX_IMAGE_PIXELS", default_value_t = 40_000_000, global = true)]
    pub max_image_pixels: u64,
    /// Seconds to wait for running jobs to reach a batch boundary on shutdown.
    #[arg(long, env = "TANUKI_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30, global = true)]
    pub shutdown_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "TANUKI_SSE_KEEPALIVE_SECS", default_value_t = 15, global = true)]
    pub sse_keepalive_secs: u64,
}

impl Config {
    /// A configuration for tests and embedding: defaults with the given data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["tanuki"]).config;
        config.data_dir = data_dir.into();
        config
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("tanuki.sqlite3")
    }

    pub fn datasets_dir(&self) -> PathBuf {
        self.data_dir.join("datasets")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.data_dir.join("checkpoints")
    }

    /// Uploads in progress; cleared on start since nothing there can be finished.
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}
