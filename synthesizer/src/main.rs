//! `chorus-synthesizer`: flags → logging → [`chorus_synthesizer::run`] until a signal.

use chorus_shared::{config::EXIT_USAGE, kinds::Registry, runtime, telemetry};
use chorus_synthesizer::{run, Config};
use clap::Parser;

fn main() {
    let config = Config::parse();
    if let Err(message) = config.connect.validate() {
        eprintln!("chorus-synthesizer: {message}");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(config.log.log_format);
    let threads = config.threads;
    runtime::run_service("chorus-synthesizer", threads, |shutdown| {
        run(config, Registry::builtin(), shutdown)
    });
}
