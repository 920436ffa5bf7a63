//! `chorus-worker`: flags → logging → [`chorus_worker::run`] until a signal.

use chorus_shared::{config::EXIT_USAGE, kinds::Registry, runtime, telemetry};
use chorus_worker::{run, Config};
use clap::Parser;

fn main() {
    let config = Config::parse();
    if let Err(message) = config.connect.validate() {
        eprintln!("chorus-worker: {message}");
        std::process::exit(EXIT_USAGE);
    }
    if config.retry_base_delay_ms > config.retry_max_delay_ms {
        eprintln!("chorus-worker: --retry-base-delay-ms must not exceed --retry-max-delay-ms");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(config.log.log_format);
    let threads = config.threads;
    runtime::run_service("chorus-worker", threads, |shutdown| {
        run(config, Registry::builtin(), shutdown)
    });
}
