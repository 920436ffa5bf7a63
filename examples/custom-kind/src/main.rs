//! Your own Chorus deployment in one binary: the built-in kinds plus [`primes::Primes`], run as
//! any of the three services by the same `run` functions the stock binaries use.
//!
//! ```text
//! chorus-custom orchestrator &
//! chorus-custom worker &
//! chorus-custom synthesizer &
//! chorus submit --kind primes --input '{"limit": 100000, "parts": 8}' --wait
//! ```

mod primes;

use chorus_shared::{config::EXIT_USAGE, kinds::Registry, shutdown, telemetry};
use clap::Parser;

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

/// Every service of the deployment must know the same kinds.
fn registry() -> Registry {
    Registry::builtin().with(primes::Primes)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let (connect, log) = match &cli {
        Cli::Orchestrator(config) => (&config.connect, config.log.log_format),
        Cli::Worker(config) => (&config.connect, config.log.log_format),
        Cli::Synthesizer(config) => (&config.connect, config.log.log_format),
    };
    if let Err(message) = connect.validate() {
        eprintln!("chorus-custom: {message}");
        std::process::exit(EXIT_USAGE);
    }
    telemetry::init(log);
    let shutdown = shutdown::on_signal();
    let result = match cli {
        Cli::Orchestrator(config) => chorus_orchestrator::run(config, registry(), shutdown).await,
        Cli::Worker(config) => chorus_worker::run(config, registry(), shutdown).await,
        Cli::Synthesizer(config) => chorus_synthesizer::run(config, registry(), shutdown).await,
    };
    if let Err(error) = result {
        tracing::error!("chorus-custom failed: {error:#}");
        std::process::exit(1);
    }
}
