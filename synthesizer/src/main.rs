//! `chorus-synthesizer`: flags → logging → [`chorus_synthesizer::run`] until a signal.

use chorus_shared::{kinds::Registry, runtime};
use chorus_synthesizer::{run, Config};
use clap::Parser;

/// The binary's name, in its error lines.
const NAME: &str = "chorus-synthesizer";

fn main() {
    let config = Config::parse();
    let threads = runtime::prepare(NAME, &config);
    let registry = runtime::registry(NAME, Registry::builtin(), &config.kinds, &config.limits);
    runtime::run_service(NAME, threads, |shutdown| run(config, registry, shutdown));
}
