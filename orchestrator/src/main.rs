//! `chorus-orchestrator`: flags → logging → [`chorus_orchestrator::run`] until a signal.

use chorus_orchestrator::{run, Config};
use chorus_shared::{kinds::Registry, runtime};
use clap::Parser;

/// The binary's name, in its error lines.
const NAME: &str = "chorus-orchestrator";

fn main() {
    let config = Config::parse();
    let threads = runtime::prepare(NAME, &config);
    let builtin = Registry::builtin_with_roots(runtime::file_roots(NAME, &config.files));
    let registry = runtime::registry(NAME, builtin, &config.kinds, &config.limits);
    runtime::run_service(NAME, threads, |shutdown| run(config, registry, shutdown));
}
