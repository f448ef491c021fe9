//! The command-line client in the same binary (`tanuki datasets|backbones|jobs|models …`): it
//! speaks only the public HTTP API, so it works against any tanuki, local or remote.
//!
//! Results print for people (tables; progress bars when standard output is a terminal, plain
//! lines otherwise) or, with `--json`, as the server's JSON. Errors are one line on standard
//! error, a server's problem+json shown as its title, detail and field, and a non-zero exit
//! (see `CliError::exit_code`).

mod archive;
mod backbones;
mod client;
mod datasets;
mod error;
mod follow;
mod jobs;
mod models;
mod output;

use std::process::ExitCode;

pub use backbones::BackbonesCommand;
pub use client::Connection;
pub use datasets::DatasetsCommand;
pub use error::CliError;
pub use jobs::JobsCommand;
pub use models::ModelsCommand;

/// The client's commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Datasets on a server: upload a folder or an archive, list, show, delete.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Pretrained weights on a server: upload, list.
    #[command(subcommand)]
    Backbones(BackbonesCommand),
    /// Jobs: submit, follow, list, show, cancel, weights, predict.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The model a spec builds.
    #[command(subcommand)]
    Models(ModelsCommand),
}

/// Options of every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print the server's JSON (event streams as JSON lines) instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Runs one client command; what went wrong is printed here, and said by the exit status.
pub fn run(command: ClientCommand, args: &ClientArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tanuki: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(dispatch(command, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tanuki: {error}");
            error.exit_code()
        }
    }
}

async fn dispatch(command: ClientCommand, args: &ClientArgs) -> Result<(), CliError> {
    let client = client::Client::new(&args.connection)?;
    let out = output::Output::new(args.json);
    match command {
        ClientCommand::Datasets(command) => datasets::run(&client, &out, command).await,
        ClientCommand::Backbones(command) => backbones::run(&client, &out, command).await,
        ClientCommand::Jobs(command) => jobs::run(&client, &out, command).await,
        ClientCommand::Models(command) => models::run(&client, &out, command).await,
    }
}
