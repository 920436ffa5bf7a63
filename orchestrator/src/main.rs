//! `chorus-orchestrator`: flags → logging → [`chorus_orchestrator::run`] until a signal.

use chorus_orchestrator::{run, Config};
use chorus_shared::{config::EXIT_USAGE, kinds::Registry, shutdown, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(message) = config.connect.validate() {
        eprintln!("chorus-orchestrator: {message}");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(config.log.log_format);
    if let Err(error) = run(config, Registry::builtin(), shutdown::on_signal()).await {
        tracing::error!("chorus-orchestrator failed: {error:#}");
        std::process::exit(1);
    }
}
