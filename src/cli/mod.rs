//! The command line: `serve` (the default), `import`, `export`, `backup`,
//! `restore`, `hash-token`. Each command has a file of its own; this one parses and
//! dispatches.

mod backup;
mod client;
mod dataset_file;
mod etcd;
mod export;
pub mod import;
mod serve;

use clap::{Parser, Subcommand};
use tower::BoxError;

use backup::{BackupArgs, RestoreArgs};
pub use client::{BearerToken, ClientArgs};
use export::ExportArgs;
use import::ImportArgs;
pub use serve::{LogFormat, ServeArgs};

/// A gRPC registry of cooperation between states and organisations.
#[derive(Parser, Debug)]
#[command(name = "cooperation-registry", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve cooperation.v1 over gRPC (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Load a dataset (proto3 JSON of cooperation.v1.Dataset) into a running server.
    Import(ImportArgs),
    /// Write the live records of a running server, at one revision, to a dataset file that import reads.
    Export(ExportArgs),
    /// Print the SHA-256 of a token read from standard input, for the access file.
    HashToken,
    /// Write a consistent online backup of a running server to a file (admin role).
    Backup(BackupArgs),
    /// Build a new data dir, or fill an empty etcd prefix, from a backup file.
    Restore(RestoreArgs),
}

impl Cli {
    /// The log format asked for (text for commands other than serve).
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Some(Command::Serve(args)) => args.log_format,
            Some(_) => LogFormat::Text,
            None => match std::env::var("COOPERATION_REGISTRY_LOG_FORMAT").as_deref() {
                Ok("json") => LogFormat::Json,
                _ => LogFormat::Text,
            },
        }
    }
}

/// The bytes of a file a flag names, or an error naming it.
fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Where a file a command writes is kept until it is complete: `file` with
/// `.partial` appended, so a file cut short never takes its name and two
/// files whose names differ only in their extension never share one.
fn partial_path(file: &std::path::Path) -> std::path::PathBuf {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    std::path::PathBuf::from(partial)
}

/// Runs the command asked for.
pub async fn run(cli: Cli) -> Result<(), BoxError> {
    let command = match cli.command {
        Some(command) => command,
        // No command: serve, with the defaults and the environment.
        None => Cli::parse_from(["cooperation-registry", "serve"]).command.expect("`serve` parses"),
    };
    match command {
        Command::Import(args) => import::run(&args).await,
        Command::Export(args) => export::run(&args).await,
        Command::Serve(args) => serve::serve(*args).await,
        Command::Backup(args) => backup::backup(&args).await,
        Command::Restore(args) => backup::restore(&args).await,
        Command::HashToken => {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)?;
            println!("{}", crate::server::auth::hash_token(token.trim_end_matches(['\r', '\n'])));
            Ok(())
        }
    }
}
