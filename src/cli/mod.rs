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

/// The client's commands, each with the options of every client command.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Datasets on a server: upload a folder or an archive, list, show, delete.
    Datasets {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Pretrained weights on a server: upload, list.
    Backbones {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        command: BackbonesCommand,
    },
    /// Jobs on a server: submit, follow, list, show, cancel, weights, predict.
    Jobs {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The model a job spec builds (asked of a server).
    Models {
        #[command(flatten)]
        args: ClientArgs,
        #[command(subcommand)]
        command: ModelsCommand,
    },
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
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tanuki: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tanuki: {error}");
            error.exit_code()
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<(), CliError> {
    let args = match &command {
        ClientCommand::Datasets { args, .. }
        | ClientCommand::Backbones { args, .. }
        | ClientCommand::Jobs { args, .. }
        | ClientCommand::Models { args, .. } => args,
    };
    let client = client::Client::new(&args.connection)?;
    let out = output::Output::new(args.json);
    match command {
        ClientCommand::Datasets { command, .. } => datasets::run(&client, &out, command).await,
        ClientCommand::Backbones { command, .. } => backbones::run(&client, &out, command).await,
        ClientCommand::Jobs { command, .. } => jobs::run(&client, &out, command).await,
        ClientCommand::Models { command, .. } => models::run(&client, &out, command).await,
    }
}
