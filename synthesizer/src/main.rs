//! `chorus-synthesizer`: flags → logging → [`chorus_synthesizer::run`] until a signal.

use chorus_shared::{config::EXIT_USAGE, kinds::Registry, shutdown, telemetry};
use chorus_synthesizer::{run, Config};
use clap::Parser;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(message) = config.connect.validate() {
        eprintln!("chorus-synthesizer: {message}");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(config.log.log_format);
    if let Err(error) = run(config, Registry::builtin(), shutdown::on_signal()).await {
        tracing::error!("chorus-synthesizer failed: {error:#}");
        std::process::exit(1);
    }
}
