//! `chorus-synthesizer`: flags → logging → [`chorus_synthesizer::run`] until a signal.

use chorus_shared::{config, kinds::Registry, runtime, telemetry};
use chorus_synthesizer::{run, Config};
use clap::Parser;

/// The binary's name, in its error lines.
const NAME: &str = "chorus-synthesizer";

fn main() {
    let config = Config::parse();
    config::exit_if_invalid(NAME, config.validate());
    telemetry::init(config.log.log_format);
    let threads = config.threads;
    runtime::run_service(NAME, threads, |shutdown| {
        run(config, Registry::builtin(), shutdown)
    });
}
