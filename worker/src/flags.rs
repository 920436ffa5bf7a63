//! The worker's flags (`Config`): worker types and their handler concurrency, the prefetch
//! apart from it, rate limits, retries and the settings every service shares.

use super::*;

/// Flags of `chorus-worker`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "chorus-worker",
    version,
    about = "Chorus worker: runs subtasks of the worker types it serves and publishes their results.",
    long_about = "Chorus worker: consumes the subtask queue of each worker type in --types \
                  (chorus.subtasks for default, chorus.subtasks.<type> for others), each with its \
                  own prefetch, runs each subtask under its timeout, the task's deadline and the \
                  type's --rate-limit, publishes the result to chorus.results with a confirm and \
                  only then acks. Failed attempts are retried with exponential backoff and \
                  jitter through delay queues, so a waiting retry holds no slot and survives \
                  crashes. Subtasks of cancelled or finished tasks are dropped. Run as many as \
                  the load needs, anywhere, with the types each machine should serve."
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub http: observe::HttpArgs,
    #[command(flatten)]
    pub kinds: KindsArgs,
    #[command(flatten)]
    pub files: FileArgs,

    /// Handlers run at once by this process per worker type that names no concurrency of its
    /// own. It bounds the handlers only: a subtask whose handler is done holds no slot while
    /// its result waits for the broker's confirm (that is what --prefetch covers).
    #[arg(long, env = "CHORUS_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Messages each worker type's consumer may hold unacked: running, waiting for a handler
    /// slot, or waiting for their result's confirm. Default: 16 times the type's concurrency
    /// (256 at the default concurrency), at most 1,024, which keeps the pipe full for quick
    /// handlers while a subtask waits in a worker for at most 16 handler runs before it starts.
    /// Each held message takes its size in memory (up to --max-message-bytes). A batch
    /// (`options.batch_size`) counts as one message: when tasks use batches, a prefetch of 2
    /// to 4 keeps one worker from holding more of a task than it runs while its peers idle;
    /// for handlers that run for minutes on several workers, a prefetch of the concurrency
    /// spreads them best.
    #[arg(long, env = "CHORUS_PREFETCH", value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: Option<u16>,

    /// Threads running handlers and the worker's own work (its AMQP I/O included): 1 (the
    /// default) runs all of it on one thread, the least overhead per message, for handlers that
    /// wait (on a model, a process, an HTTP server, a timer) and compute little; 0 for one per
    /// core. Blocking or CPU-heavy handler code belongs on `tokio::task::spawn_blocking` either
    /// way: on one thread it would hold up every other handler and the broker connection. The
    /// worker scales by processes.
    #[arg(long, env = "CHORUS_WORKER_THREADS", default_value_t = 1)]
    pub threads: u16,

    /// Worker types served, comma-separated, each optionally with its own concurrency:
    /// `default,gpu:2,api:32`. Each type has its own queue and prefetch.
    #[arg(long, env = "CHORUS_TYPES", default_value = "default", value_delimiter = ',', value_parser = parse_worker_type)]
    pub types: Vec<(String, Option<u16>)>,

    /// Rate limit of a worker type, shared by all its workers on every machine:
    /// `TYPE=RATE[:BURST]` in subtasks per second (burst 1 by default). Repeatable; give the
    /// same limit to every worker of the type.
    #[arg(long = "rate-limit", env = "CHORUS_RATE_LIMITS", value_delimiter = ',')]
    pub rate_limits: Vec<RateLimit>,

    /// Delay before the first retry; each next one doubles, plus random jitter.
    #[arg(long, env = "CHORUS_RETRY_BASE_DELAY_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_delay_ms: u64,

    /// Longest delay between two attempts.
    #[arg(long, env = "CHORUS_RETRY_MAX_DELAY_MS", default_value_t = config::DEFAULT_RETRY_MAX_DELAY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,
}

/// Handlers at once per worker type by default (`--concurrency`): enough for handlers that
/// wait on I/O for seconds without over-running what they call, and more than quick handlers
/// need, since the prefetch, not this, keeps their pipe full.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Prefetch per handler slot when `--prefetch` is not given: a subtask held by a worker waits
/// for at most this many handler runs before its own starts.
pub const PREFETCH_PER_SLOT: u16 = 16;

/// Most messages a consumer holds by default, whatever its concurrency: bounds the memory they
/// take (up to `--max-message-bytes` each).
pub const MAX_DEFAULT_PREFETCH: u16 = 1024;

/// The prefetch of a worker type whose handlers run `concurrency` at once: `prefetch` (the
/// flag) when given, else [`PREFETCH_PER_SLOT`] × `concurrency`, at most
/// [`MAX_DEFAULT_PREFETCH`] and never below `concurrency` (messages).
///
/// Why decoupled: a quick handler's subtask spends most of its time in the worker waiting for
/// its result's confirm (a few ms), not in the handler (µs), so a prefetch equal to the
/// concurrency left the handler slots idle and the rate at about half the broker's (issue 20);
/// the multiple, rather than one fixed number, keeps the wait of a held subtask behind slow
/// handlers proportionate (a type of 2 slow GPU handlers holds 32, not hundreds).
pub fn prefetch_of(concurrency: u16, prefetch: Option<u16>) -> u16 {
    prefetch.unwrap_or_else(|| {
        concurrency
            .saturating_mul(PREFETCH_PER_SLOT)
            .min(MAX_DEFAULT_PREFETCH)
            .max(concurrency)
    })
}

/// Parses `TYPE` or `TYPE:CONCURRENCY`.
fn parse_worker_type(raw: &str) -> Result<(String, Option<u16>), String> {
    let (name, concurrency) = match raw.split_once(':') {
        Some((name, concurrency)) => {
            let concurrency = concurrency
                .parse::<u16>()
                .ok()
                .filter(|c| *c >= 1)
                .ok_or_else(|| {
                    format!("concurrency {concurrency:?} of type {name:?} must be 1 to 65535")
                })?;
            (name, Some(concurrency))
        }
        None => (raw, None),
    };
    protocol::validate_worker_type(name).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), concurrency))
}

impl Config {
    /// Checks what clap cannot check one flag at a time: both URLs parse
    /// ([`ConnectArgs::validate`]), `--retry-base-delay-ms` does not exceed
    /// `--retry-max-delay-ms` (the first retry waits the base, and no delay passes the maximum),
    /// and every `--file-root` is a directory ([`FileArgs::roots`]).
    ///
    /// # Errors
    /// The first problem, as one line for the user: the URL's (password hidden),
    /// `--retry-base-delay-ms must not exceed --retry-max-delay-ms`, or the root's.
    pub fn validate(&self) -> Result<(), String> {
        self.http.listen(observe::WORKER_LISTEN)?;
        self.connect.validate()?;
        if self.retry_base_delay_ms > self.retry_max_delay_ms {
            return Err("--retry-base-delay-ms must not exceed --retry-max-delay-ms".to_owned());
        }
        self.files.roots().map(drop)
    }

    /// The wait before a retry: the `backoff` delay, or the handler's `retry_after` when longer
    /// (an HTTP step's `Retry-After`), capped at the largest delay bucket this worker declares
    /// (`topology::delay_queues_up_to` of `--retry-max-delay-ms`, at least a minute): a longer
    /// wait would need a bucket no process declared, so the retry comes earlier than asked.
    pub fn retry_wait(&self, backoff: Duration, retry_after: Option<Duration>) -> Duration {
        let Some(asked) = retry_after else {
            return backoff;
        };
        let declared = topology::delay_queues_up_to(Duration::from_millis(self.retry_max_delay_ms));
        let cap = declared
            .last()
            .map_or(backoff, |(_, bound)| Duration::from_millis(*bound));
        backoff.max(asked.min(cap))
    }

    /// Delay before attempt `next_attempt` (2 for the first retry), with jitter.
    pub fn retry_delay(&self, next_attempt: u32) -> Duration {
        // Past 64 doublings every delay is the maximum anyway.
        let retries = usize::try_from(next_attempt.saturating_sub(1).min(64))
            .unwrap_or(usize::MAX)
            .max(1);
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry_base_delay_ms))
            .with_max_delay(Duration::from_millis(self.retry_max_delay_ms))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(retries)
            .build()
            .last()
            .unwrap_or(Duration::from_millis(self.retry_base_delay_ms))
            .min(Duration::from_millis(self.retry_max_delay_ms))
    }
}

chorus_shared::service_config!(Config);
