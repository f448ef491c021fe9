//! Command-line flags and environment variables (`tanuki --help` lists them all).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cli::ClientCommand;
use crate::datasets::ImportLimits;
use crate::jobs::WebhookSettings;
use crate::train::KernelSettings;

#[derive(Debug, Parser)]
#[command(name = "tanuki", version, about = "A training-job service for transfer learning and fine-tuning")]
// The service's settings given before a subcommand would be silently ignored by `serve`, which
// reads its own: refuse them instead.
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(Box<Config>),
    /// Print the OpenAPI document (JSON) and exit.
    Openapi,
    /// A client of a running server (`--url`): datasets, backbones, jobs, models.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Everything the service needs to start.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TANUKI_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Directory holding the SQLite database, datasets and checkpoints.
    #[arg(long, env = "TANUKI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Number of jobs trained at once (0 runs the API without training anything).
    #[arg(long, env = "TANUKI_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Largest accepted dataset upload, in bytes (larger ones get 413).
    #[arg(long, env = "TANUKI_MAX_UPLOAD_BYTES", default_value_t = 4 << 30)]
    pub max_upload_bytes: u64,
    /// Largest total size an archive may unpack to, in bytes.
    #[arg(long, env = "TANUKI_MAX_UNPACKED_BYTES", default_value_t = 16 << 30)]
    pub max_unpacked_bytes: u64,
    /// Largest size one archive entry may unpack to, in bytes (by its header or in fact).
    #[arg(long, env = "TANUKI_MAX_ENTRY_BYTES", default_value_t = 256 << 20)]
    pub max_entry_bytes: u64,
    /// Largest compression ratio (unpacked : compressed) of a zip entry or a tar.gz stream, once
    /// past 1 MiB unpacked; beyond it the upload is refused as a decompression bomb.
    #[arg(long, env = "TANUKI_MAX_COMPRESSION_RATIO", default_value_t = 100)]
    pub max_compression_ratio: u64,
    /// Largest decoded image accepted, in pixels (width × height); larger ones are skipped.
    #[arg(long, env = "TANUKI_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Seconds to wait for running jobs to reach a batch boundary on shutdown.
    #[arg(long, env = "TANUKI_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "TANUKI_SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,
    /// A live SSE subscriber this many events behind the newest is too slow: it gets a final
    /// `dropped` event and its stream ends (it can reconnect with Last-Event-ID).
    #[arg(long, env = "TANUKI_SSE_MAX_LAG_EVENTS", default_value_t = 1024)]
    pub sse_max_lag_events: usize,
    /// API tokens, comma-separated. When any token is configured (here or in the file), every
    /// endpoint except the probes and the dashboard shell needs `Authorization: Bearer <token>`.
    #[arg(long, env = "TANUKI_API_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub api_tokens: Vec<String>,
    /// A file of API tokens, one per line (blank lines and `#` comments ignored).
    #[arg(long, env = "TANUKI_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (CORS), comma-separated; `*` allows any.
    /// Empty (the default) sends no CORS headers.
    #[arg(long, env = "TANUKI_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Milliseconds to wait after a job's first failed webhook attempt; each later wait
    /// doubles, up to an hour.
    #[arg(long, env = "TANUKI_WEBHOOK_FIRST_RETRY_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_first_retry_ms: u64,
    /// Seconds after a job's end during which its webhook is retried; then it is given up.
    #[arg(long, env = "TANUKI_WEBHOOK_RETRY_WINDOW_SECS", default_value_t = 86_400)]
    pub webhook_retry_window_secs: u64,
    /// Seconds one webhook attempt may take, connecting included.
    #[arg(long, env = "TANUKI_WEBHOOK_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub webhook_timeout_secs: u64,
    #[command(flatten)]
    pub kernels: KernelArgs,
}

/// The CPU kernels' settings (one value for the process, installed at start-up). The defaults
/// are the fastest paths this CPU has; the switches are there to compare paths or to work around
/// one.
#[derive(Debug, Clone, clap::Args)]
pub struct KernelArgs {
    /// Threads per kernel call (default: the available parallelism).
    #[arg(long, env = "TANUKI_KERNEL_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub kernel_threads: Option<u16>,
    /// Never take the AVX-512 paths, even where the CPU has AVX-512 (the portable path).
    #[arg(long, env = "TANUKI_KERNEL_NO_AVX512")]
    pub kernel_no_avx512: bool,
    /// Run every dense convolution as im2col + GEMM instead of the direct AVX-512 kernel.
    #[arg(long, env = "TANUKI_CONV_NO_DIRECT")]
    pub conv_no_direct: bool,
    /// Run 3x3 stride-1 convolutions on the direct kernel instead of Winograd F(2x2, 3x3).
    #[arg(long, env = "TANUKI_CONV_NO_WINOGRAD")]
    pub conv_no_winograd: bool,
    /// Size of an im2col tile of the GEMM convolution path, in KiB.
    #[arg(long, env = "TANUKI_CONV_TILE_KIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub conv_tile_kib: u32,
}

impl KernelArgs {
    /// The settings from the environment alone (benchmarks, which have no command line of ours).
    pub fn from_env() -> Self {
        Cli::parse_from(["tanuki"]).config.kernels
    }

    pub fn settings(&self) -> KernelSettings {
        KernelSettings {
            threads: self.kernel_threads.map(usize::from),
            avx512: !self.kernel_no_avx512,
            direct_conv: !self.conv_no_direct,
            winograd: !self.conv_no_winograd,
            conv_tile_kib: self.conv_tile_kib as usize,
        }
    }
}

impl Config {
    pub fn webhook_settings(&self) -> WebhookSettings {
        WebhookSettings {
            first_retry: Duration::from_millis(self.webhook_first_retry_ms),
            retry_window: Duration::from_secs(self.webhook_retry_window_secs),
            timeout: Duration::from_secs(self.webhook_timeout_secs),
        }
    }

    /// The bounds on what one dataset upload may cost.
    pub fn import_limits(&self) -> ImportLimits {
        ImportLimits {
            max_unpacked_bytes: self.max_unpacked_bytes,
            max_entry_bytes: self.max_entry_bytes,
            max_compression_ratio: self.max_compression_ratio,
            max_image_pixels: self.max_image_pixels,
            ..ImportLimits::default()
        }
    }

    /// A configuration for tests and embedding: defaults with the given data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["tanuki"]).config;
        config.data_dir = data_dir.into();
        config
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Every configured API token: the list and the file's lines, trimmed, empties dropped.
    pub fn load_api_tokens(&self) -> std::io::Result<Vec<String>> {
        let mut tokens: Vec<String> =
            self.api_tokens.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
        if let Some(path) = &self.api_tokens_file {
            let text = std::fs::read_to_string(path)?;
            tokens.extend(
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned),
            );
        }
        Ok(tokens)
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

    pub fn backbones_dir(&self) -> PathBuf {
        self.data_dir.join("backbones")
    }

    /// Uploads in progress; cleared on start since nothing there can be finished.
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }
}
