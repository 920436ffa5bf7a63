//! Your own Chorus deployment in one binary: the built-in kinds plus [`primes::Primes`], run as
//! any of the three services by the same `run` functions the stock binaries use.
//!
//! ```text
//! chorus-custom orchestrator &
//! chorus-custom worker &
//! chorus-custom synthesizer &
//! chorus submit --kind primes --input '{"limit": 100000, "parts": 8}' --wait
//! ```
//!
//! `PRIMES_REVISION` (default `1`) names the build's definition of `primes`, announced as its
//! fingerprint: two builds with different revisions play a changed kind being rolled out
//! (docs/operations.md, "Rolling out a kind").

mod primes;

use chorus_shared::{files::FileRoots, kinds::Registry, runtime};
use clap::Parser;

/// The binary's name, in its error lines.
const NAME: &str = "chorus-custom";

/// Chorus with the `primes` kind added: run as orchestrator, worker or synthesizer.
#[derive(Parser)]
#[command(name = "chorus-custom", version)]
enum Cli {
    /// Run the orchestrator (same flags as chorus-orchestrator).
    Orchestrator(chorus_orchestrator::Config),
    /// Run a worker (same flags as chorus-worker).
    Worker(chorus_worker::Config),
    /// Run the synthesizer (same flags as chorus-synthesizer).
    Synthesizer(chorus_synthesizer::Config),
}

/// Every service of the deployment must know the same kinds; `roots` are where `wordfreq` may
/// read (`--file-root` of the orchestrator and the worker; the synthesizer reads no files).
fn registry(roots: FileRoots) -> Registry {
    let revision = std::env::var("PRIMES_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "1".to_owned());
    Registry::builtin_with_roots(roots).with(primes::Primes { revision })
}

/// Like the stock binaries: the service's own checks of its flags (exit 64 on a bad one), then
/// logging, then its `run` on a runtime of its `--threads` until a signal.
fn main() {
    let cli = Cli::parse();
    let threads = match &cli {
        Cli::Orchestrator(config) => runtime::prepare(NAME, config),
        Cli::Worker(config) => runtime::prepare(NAME, config),
        Cli::Synthesizer(config) => runtime::prepare(NAME, config),
    };
    runtime::run_service(NAME, threads, |shutdown| async move {
        match cli {
            Cli::Orchestrator(config) => {
                let roots = runtime::file_roots(NAME, &config.files);
                let registry =
                    runtime::registry(NAME, registry(roots), &config.kinds, &config.limits);
                chorus_orchestrator::run(config, registry, shutdown).await
            }
            Cli::Worker(config) => {
                let roots = runtime::file_roots(NAME, &config.files);
                let registry =
                    runtime::registry(NAME, registry(roots), &config.kinds, &config.limits);
                chorus_worker::run(config, registry, shutdown).await
            }
            Cli::Synthesizer(config) => {
                let registry = runtime::registry(
                    NAME,
                    registry(FileRoots::none()),
                    &config.kinds,
                    &config.limits,
                );
                chorus_synthesizer::run(config, registry, shutdown).await
            }
        }
    });
}
