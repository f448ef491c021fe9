use clap::Parser;
use tanuki::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", tanuki::http::openapi::document());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tanuki=info,tower_http=info".into()),
        )
        .init();
    tanuki::app::run(cli.config, tanuki::app::shutdown_signal()).await
}
