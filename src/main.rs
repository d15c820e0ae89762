use clap::Parser;
use tracing_subscriber::EnvFilter;

use cooperation_registry::cli::{self, Cli, LogFormat};
use cooperation_registry::server::logs::Logs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let writer = Logs::start();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer.clone());
    match cli.log_format() {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let outcome = cli::run(cli).await;
    writer.flush();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cooperation-registry: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
