//! Logging set-up: `tracing` with `RUST_LOG` filtering, as text or JSON lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// The filter without `RUST_LOG`: Chorus's own lines from `info`; lapin's from `warn`; the
/// Redis Cluster client's from `error`, since it warns once per node on every failed connect
/// and on every `MOVED` (a resharding), where Chorus logs one line of its own (e.g. a TLS
/// refusal names every seed once).
pub const DEFAULT_FILTER: &str = "info,lapin=warn,redis::cluster_handling=error";

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    drop(result);
}
