//! Command-line settings shared by every binary, and their start-up validation.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Default broker address.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default Redis address.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Exit code for a bad flag or environment value (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Default of `--redis-timeout-ms`: the longest wait for one Redis command, in ms.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 5000;
/// Default of `--publish-timeout-ms`: the longest wait for a publish confirm, in ms.
pub const DEFAULT_PUBLISH_TIMEOUT_MS: u64 = 30_000;
/// Default `--retry-max-delay-ms` of the worker (its longest retry delay) and the orchestrator
/// (the delay queues it declares reach it): one minute.
pub const DEFAULT_RETRY_MAX_DELAY_MS: u64 = 60_000;

/// Where the services are and how long to wait for them.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    /// RabbitMQ address (amqp:// or amqps://); the vhost is the URL path, %2f for "/".
    #[arg(long, env = "CHORUS_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,

    /// Redis address, redis://[user:password@]host:port[/db].
    #[arg(long, env = "CHORUS_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,

    /// Longest wait for one Redis command; a slower command fails and is retried later.
    #[arg(long, env = "CHORUS_REDIS_TIMEOUT_MS", default_value_t = DEFAULT_REDIS_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Longest wait for the broker to confirm a publish; past it the publish counts as failed
    /// and the connection is rebuilt.
    #[arg(long, env = "CHORUS_PUBLISH_TIMEOUT_MS", default_value_t = DEFAULT_PUBLISH_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,
}

impl ConnectArgs {
    /// Checks that both URLs parse, so a typo fails at start-up with one clear line.
    ///
    /// # Errors
    /// The first URL that does not parse, with the password hidden.
    pub fn validate(&self) -> Result<(), String> {
        self.amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("--amqp-url {}: {e}", redact_url(&self.amqp_url)))?;
        redis::Client::open(self.redis_url.as_str())
            .map_err(|e| format!("--redis-url {}: {e}", redact_url(&self.redis_url)))?;
        Ok(())
    }

    /// Redis command timeout.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Publish confirm timeout.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// Settings of logging.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format; the level comes from RUST_LOG (default "info").
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Limits on what a consumer accepts.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest message body accepted on any queue; larger ones are dead-lettered.
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_message_bytes: u64,

    /// Runs that may start and never finish (they crash or stall their process) before Chorus
    /// gives up as poison: a subtask's handler (redelivered subtasks run alone, so only the
    /// culprit is counted), a task's planner or its synthesis. The subtask or task is then
    /// settled as failed (or rejected) with the reason.
    #[arg(long, env = "CHORUS_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..20))]
    pub max_deliveries: u64,

    /// Most subtasks one task may have in all, planned and spawned: a larger plan rejects the
    /// task, spawning past it fails the task.
    #[arg(long, env = "CHORUS_MAX_SUBTASKS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_subtasks: u64,

    /// Deepest spawning allowed: planned subtasks are at depth 0, what they spawn at 1, and so
    /// on. A spawn deeper than this fails the task.
    #[arg(long, env = "CHORUS_MAX_SPAWN_DEPTH", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_spawn_depth: u32,
}

impl LimitArgs {
    /// The body limit as a size.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX)
    }
}

/// Settings of services that store and deliver outcomes.
#[derive(Args, Clone, Debug)]
pub struct OutcomeArgs {
    /// How long outcomes (and the task record) stay in Redis after a task ends; a task id can
    /// be reused once its outcome has expired.
    #[arg(long, env = "CHORUS_OUTCOME_TTL_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub outcome_ttl_secs: u64,

    /// Lease on planning or synthesizing one task; a crashed holder's work is taken over by a
    /// redelivered message once the lease lapses.
    #[arg(long, env = "CHORUS_LEASE_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ms: u64,
}

impl OutcomeArgs {
    /// Outcome TTL.
    pub fn outcome_ttl(&self) -> Duration {
        Duration::from_secs(self.outcome_ttl_secs)
    }

    /// Lease duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}

/// The directories kinds may read files under (services that run planners or handlers).
#[derive(Args, Clone, Debug, Default)]
pub struct FileArgs {
    /// A directory under which kinds may read the files a task names (wordfreq's paths);
    /// repeat the flag, or separate directories with commas in the variable. A path outside
    /// every root (also through `..` or a symlink) rejects the task; with none, every path is
    /// refused.
    #[arg(
        long = "file-root",
        env = "CHORUS_FILE_ROOTS",
        value_name = "DIR",
        value_delimiter = ','
    )]
    pub file_roots: Vec<std::path::PathBuf>,
}

impl FileArgs {
    /// Opens the roots, so a missing or wrong directory fails at start-up.
    ///
    /// # Errors
    /// The first root that is not a directory that can be opened, as one line for the user.
    pub fn roots(&self) -> Result<crate::files::FileRoots, String> {
        crate::files::FileRoots::new(&self.file_roots).map_err(|e| e.to_string())
    }
}

/// Graceful shutdown settings.
#[derive(Args, Clone, Debug)]
pub struct ShutdownArgs {
    /// On SIGTERM or SIGINT, time given to work in progress before exiting; what is not done by
    /// then goes back to the queue. A second signal exits at once.
    #[arg(long, env = "CHORUS_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl ShutdownArgs {
    /// Grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Ends the process at start-up when a service's settings are invalid, so every binary built on
/// a service's `run` refuses the same flags the same way. `checked` is what the service's
/// `Config::validate` returned; on `Err(message)` this prints `<name>: <message>` as one line on
/// stderr and exits with [`EXIT_USAGE`] (`name` is the binary, e.g. `chorus-worker`).
pub fn exit_if_invalid(name: &str, checked: Result<(), String>) {
    if let Err(message) = checked {
        eprintln!("{name}: {message}");
        std::process::exit(EXIT_USAGE);
    }
}

/// A URL with its password replaced by `***`, fit for a log line.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}://{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:pw@host:6379/1"),
            "redis://:***@host:6379/1"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
