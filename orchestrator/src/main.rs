//! `chorus-orchestrator`: flags → logging → [`chorus_orchestrator::run`] until a signal.

use chorus_orchestrator::{run, Config};
use chorus_shared::{config::EXIT_USAGE, kinds::Registry, runtime, telemetry};
use clap::Parser;

fn main() {
    let config = Config::parse();
    if let Err(message) = config.connect.validate() {
        eprintln!("chorus-orchestrator: {message}");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(config.log.log_format);
    let threads = config.threads;
    runtime::run_service("chorus-orchestrator", threads, |shutdown| {
        run(config, Registry::builtin(), shutdown)
    });
}
