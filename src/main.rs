use std::process::ExitCode;

use clap::Parser;
use tanuki::config::{Cli, Command};

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Openapi) => {
            print!("{}", tanuki::http::openapi::document());
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Client(command)) => return Ok(tanuki::cli::run(command)),
        Some(Command::Serve(config)) => *config,
        None => cli.config,
    };
    // Before the runtime's threads exist: the allocator reads its settings once.
    tanuki::process_env::reexec_with_tuned_env();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tanuki=info,tower_http=info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(tanuki::app::run(config, tanuki::app::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
