//! Wiring: open the database, requeue interrupted jobs, start workers, serve, shut down in order
//! (stop accepting → end SSE streams → jobs stop at a batch boundary → wait → close the pool).

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogPaths};
use crate::config::Config;
use crate::http::auth::Auth;
use crate::http::{self, AppState, StateInner};
use crate::jobs::{self, Jobs};
use crate::telemetry::Telemetry;

/// A started service: its address and the handle to stop it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub jobs: Arc<Jobs>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

/// Binds `config.addr` and serves until `signal` completes.
pub async fn run(config: Config, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.addr).await?;
    let running = start(config, listener).await?;
    tracing::info!(addr = %running.addr, "listening");
    signal.await;
    tracing::info!("shutting down");
    running.stop().await
}

/// Starts the service on an already bound listener (tests bind port 0).
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Running> {
    let tokens = config.load_api_tokens().map_err(|e| anyhow::anyhow!("reading TANUKI_API_TOKENS_FILE: {e}"))?;
    let auth = Auth::new(&tokens);
    let kernels = config.kernels.settings();
    // Several servers in one process (the tests) share the kernels; the first one's settings stand.
    if let Err(active) = crate::train::configure_kernels(kernels) {
        if active != kernels {
            tracing::warn!(?active, requested = ?kernels, "kernel settings already installed in this process; keeping them");
        }
    }
    tracing::info!(?kernels, avx512 = crate::train::kernels_use_avx512(), "CPU kernels");
    tracing::info!(api_tokens = tokens.len(), cors_origins = ?config.cors_origins, "access control");
    for dir in [config.data_dir.clone(), config.datasets_dir(), config.checkpoints_dir()] {
        std::fs::create_dir_all(&dir)?;
    }
    // Nothing in the uploads folder can be finished after a restart.
    let _ = std::fs::remove_dir_all(config.uploads_dir());
    std::fs::create_dir_all(config.uploads_dir())?;

    let pool = crate::db::connect(&config.database_path()).await?;
    let shutdown = CancellationToken::new();
    let jobs = Jobs::new(
        pool.clone(),
        jobs::Paths {
            datasets: config.datasets_dir(),
            checkpoints: config.checkpoints_dir(),
            backbones: config.backbones_dir(),
        },
        config.webhook_settings(),
        shutdown.clone(),
    );
    let requeued = jobs.requeue_interrupted().await?;
    if requeued > 0 {
        tracing::info!(requeued, "jobs interrupted by the last stop are queued again");
    }
    // The requests that held these died with the last process; a retry must be able to run.
    let freed = crate::db::idempotency::release_all_unanswered(&pool).await?;
    if freed > 0 {
        tracing::info!(freed, "idempotency keys of requests interrupted by the last stop are free again");
    }
    let workers = jobs::spawn_workers(jobs.clone(), config.workers);
    let webhooks = jobs.spawn_webhook_dispatcher();
    let telemetry = Telemetry::new();
    let steps_follower = telemetry.clone().follow_steps(&jobs.hub, shutdown.clone());

    let state = AppState::new(StateInner {
        jobs: jobs.clone(),
        catalog: Catalog::new(
            pool.clone(),
            CatalogPaths {
                datasets: config.datasets_dir(),
                backbones: config.backbones_dir(),
                uploads: config.uploads_dir(),
            },
            config.import_limits(),
        ),
        max_upload_bytes: config.max_upload_bytes,
        data_dir: config.data_dir.clone(),
        sse_keepalive: std::time::Duration::from_secs(config.sse_keepalive_secs.max(1)),
        sse_max_lag_events: config.sse_max_lag_events.max(1),
        auth,
        cors_origins: config.cors_origins.clone(),
        telemetry,
        workers: workers.iter().map(|w| w.abort_handle()).collect(),
    });
    let addr = listener.local_addr()?;
    let app = http::router(state);
    let timeout = config.shutdown_timeout();
    let token = shutdown.clone();
    let jobs_for_task = jobs.clone();
    let task = tokio::spawn(async move {
        // Cancelling the token stops accepting, ends SSE streams and stops idle workers.
        let server = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        token.cancelled().await;
        jobs_for_task.stop_running_for_shutdown();
        let drained = tokio::time::timeout(timeout, async {
            for worker in workers {
                let _ = worker.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?timeout,
                "running jobs did not stop in time; they resume from their last checkpoint on the next start"
            );
        }
        match tokio::time::timeout(timeout, server).await {
            Ok(result) => result??,
            Err(_) => tracing::warn!("connections still open after the shutdown timeout"),
        }
        let _ = steps_follower.await;
        let _ = webhooks.await;
        pool.close().await;
        Ok(())
    });
    Ok(Running { addr, jobs, shutdown, task })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
