//! `chorus-worker`: flags → logging → [`chorus_worker::run`] until a signal.

use chorus_shared::{kinds::Registry, runtime};
use chorus_worker::{run, Config};
use clap::Parser;

/// The binary's name, in its error lines.
const NAME: &str = "chorus-worker";

fn main() {
    let config = Config::parse();
    let threads = runtime::prepare(NAME, &config);
    runtime::run_service(NAME, threads, |shutdown| {
        run(config, Registry::builtin(), shutdown)
    });
}
