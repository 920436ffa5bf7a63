//! Command-line settings shared by every binary, and their start-up validation.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::tls::{Endpoint, TlsFiles};

/// Default broker address.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default Redis address.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Exit code for a bad flag or environment value (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Exit code when a server refuses the connection for good at start-up, e.g. its TLS
/// certificate does not verify (BSD `EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: i32 = 69;

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
/// Default of `--amqp-connect-timeout-ms`: the longest wait for one connection attempt to one
/// RabbitMQ node, in ms. A live node answers in milliseconds; a host that is down may drop the
/// TCP handshake without answering, and the next node must not wait for the system's TCP timeout.
pub const DEFAULT_AMQP_CONNECT_TIMEOUT_MS: u64 = 5000;

/// Default AMQP heartbeat Chorus asks the broker for, in seconds. A broker host that vanishes
/// without closing its sockets is noticed only when nothing, heartbeats included, has come from
/// it for two intervals (AMQP 0-9-1, section 4.2.7): 20 s with this, where the broker's own
/// proposal (60 s) would take two minutes. RabbitMQ's guide advises 5 to 20 s; below that a
/// loaded host risks closing healthy connections.
pub const DEFAULT_AMQP_HEARTBEAT_S: u16 = 10;
/// Default of `--publish-timeout-ms`: the longest wait for a publish confirm, in ms.
pub const DEFAULT_PUBLISH_TIMEOUT_MS: u64 = 30_000;
/// Default `--retry-max-delay-ms` of the worker (its longest retry delay) and the orchestrator
/// (the delay queues it declares reach it): one minute.
pub const DEFAULT_RETRY_MAX_DELAY_MS: u64 = 60_000;

/// Where the services are, how to check them (TLS), and how long to wait for them.
///
/// Each URL comes from its flag (or environment variable) or from a file, never both, and is
/// read when used ([`ConnectArgs::amqp`], [`ConnectArgs::redis`]): a rotated secret or
/// certificate takes effect at the next connection. `Debug` hides the passwords.
#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// RabbitMQ address (amqp:// or amqps:// for TLS); the vhost is the URL path, %2f for "/".
    /// For a cluster, the nodes' URLs separated by commas: the first that answers is used, the
    /// next ones when it is lost (a comma inside a password is written %2C).
    /// [default: amqp://guest:***@127.0.0.1:5672/%2f]
    #[arg(long, env = "CHORUS_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// File holding the RabbitMQ address, e.g. a container or systemd secret (one line, the
    /// nodes' URLs separated by commas as in --amqp-url; a trailing newline is ignored); instead
    /// of --amqp-url.
    #[arg(long, env = "CHORUS_AMQP_URL_FILE", value_name = "FILE")]
    pub amqp_url_file: Option<PathBuf>,

    /// PEM file of CA certificates that verify the broker's certificate (amqps://), trusted
    /// instead of the system's roots.
    #[arg(long, env = "CHORUS_AMQP_TLS_CA", value_name = "FILE")]
    pub amqp_tls_ca: Option<PathBuf>,

    /// PEM client certificate (chain) for mutual TLS with the broker; needs --amqp-tls-key.
    #[arg(long, env = "CHORUS_AMQP_TLS_CERT", value_name = "FILE")]
    pub amqp_tls_cert: Option<PathBuf>,

    /// PEM private key of --amqp-tls-cert.
    #[arg(long, env = "CHORUS_AMQP_TLS_KEY", value_name = "FILE")]
    pub amqp_tls_key: Option<PathBuf>,

    /// Redis address, redis://[user:password@]host:port[/db], or rediss:// for TLS (an ACL user
    /// goes before the password); a Redis Cluster as
    /// redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS; db 0
    /// only). [default: redis://127.0.0.1:6379]
    #[arg(long, env = "CHORUS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// File holding the Redis address, e.g. a container or systemd secret (one line; a trailing
    /// newline is ignored); instead of --redis-url.
    #[arg(long, env = "CHORUS_REDIS_URL_FILE", value_name = "FILE")]
    pub redis_url_file: Option<PathBuf>,

    /// PEM file of CA certificates that verify Redis's certificate (rediss://), trusted instead
    /// of the system's roots.
    #[arg(long, env = "CHORUS_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,

    /// PEM client certificate (chain) for mutual TLS with Redis; needs --redis-tls-key.
    #[arg(long, env = "CHORUS_REDIS_TLS_CERT", value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert.
    #[arg(long, env = "CHORUS_REDIS_TLS_KEY", value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,

    /// Longest wait for one attempt to connect to a RabbitMQ node (TCP, TLS and the AMQP
    /// handshake); past it the next node of --amqp-url is tried.
    #[arg(long, env = "CHORUS_AMQP_CONNECT_TIMEOUT_MS", default_value_t = DEFAULT_AMQP_CONNECT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub amqp_connect_timeout_ms: u64,

    /// AMQP heartbeat to ask the broker for, in seconds (the lower of this and the broker's
    /// proposal is used): a node that stops answering without closing the connection, a host
    /// gone or a network cut, is given up after two heartbeats without a frame and the next
    /// node of --amqp-url is tried. A heartbeat= in a URL wins over it.
    #[arg(long, env = "CHORUS_AMQP_HEARTBEAT_S", default_value_t = DEFAULT_AMQP_HEARTBEAT_S, value_parser = clap::value_parser!(u16).range(1..))]
    pub amqp_heartbeat_s: u16,

    /// Longest wait for one Redis command; a slower command fails and is retried later.
    #[arg(long, env = "CHORUS_REDIS_TIMEOUT_MS", default_value_t = DEFAULT_REDIS_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Longest wait for the broker to confirm a publish; past it the publish counts as failed
    /// and the connection is rebuilt.
    #[arg(long, env = "CHORUS_PUBLISH_TIMEOUT_MS", default_value_t = DEFAULT_PUBLISH_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,
}

impl std::fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectArgs")
            .field("amqp_url", &self.amqp_url.as_deref().map(redact_url))
            .field("amqp_url_file", &self.amqp_url_file)
            .field("amqp_tls_ca", &self.amqp_tls_ca)
            .field("amqp_tls_cert", &self.amqp_tls_cert)
            .field("amqp_tls_key", &self.amqp_tls_key)
            .field("amqp_connect_timeout_ms", &self.amqp_connect_timeout_ms)
            .field("amqp_heartbeat_s", &self.amqp_heartbeat_s)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_url_file", &self.redis_url_file)
            .field("redis_tls_ca", &self.redis_tls_ca)
            .field("redis_tls_cert", &self.redis_tls_cert)
            .field("redis_tls_key", &self.redis_tls_key)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .finish()
    }
}

/// The URL of `flag`: given directly, read from its file (`<flag>-file`), or the default.
fn resolve_url(
    flag: &str,
    given: Option<&str>,
    file: Option<&std::path::Path>,
    default: &str,
) -> Result<String, String> {
    match (given, file) {
        (Some(_), Some(_)) => Err(format!(
            "{flag} and {flag}-file are both given (flag or environment); use one"
        )),
        (Some(url), None) => Ok(url.to_owned()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{flag}-file {}: {e}", path.display()))?;
            // Secrets are usually written with a trailing newline; anything more is a mistake
            // that would otherwise end up inside the URL.
            let url = text.trim_end_matches(['\n', '\r']);
            if url.trim().is_empty() || url.contains(['\n', '\r']) || url.trim() != url {
                return Err(format!(
                    "{flag}-file {}: must hold one URL on one line",
                    path.display()
                ));
            }
            Ok(url.to_owned())
        }
        (None, None) => Ok(default.to_owned()),
    }
}

/// The URLs of a list such as `--amqp-url`'s: separated by commas, blanks around each ignored
/// (a comma is never part of a URL's host or vhost, and one in a password is percent-encoded as
/// `%2C`, RFC 3986). `flag` names the setting in the error.
///
/// # Errors
/// An entry is empty (`a,,b`, a trailing comma); the message quotes no URL.
pub fn split_urls(flag: &str, text: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = text.split(',').map(|url| url.trim().to_owned()).collect();
    match urls.iter().position(String::is_empty) {
        Some(index) => Err(format!(
            "{flag}: entry {} of the comma-separated list is empty",
            index + 1
        )),
        None => Ok(urls),
    }
}

impl ConnectArgs {
    /// Settings for plain `amqp_url` and `redis_url`, no files, default timeouts: for programs
    /// that take the URLs their own way (the benchmark, tests).
    pub fn from_urls(amqp_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            amqp_url: Some(amqp_url.into()),
            amqp_url_file: None,
            amqp_tls_ca: None,
            amqp_tls_cert: None,
            amqp_tls_key: None,
            amqp_connect_timeout_ms: DEFAULT_AMQP_CONNECT_TIMEOUT_MS,
            amqp_heartbeat_s: DEFAULT_AMQP_HEARTBEAT_S,
            redis_url: Some(redis_url.into()),
            redis_url_file: None,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            redis_timeout_ms: DEFAULT_REDIS_TIMEOUT_MS,
            publish_timeout_ms: DEFAULT_PUBLISH_TIMEOUT_MS,
        }
    }

    /// These settings as the environment of a child process (`CHORUS_AMQP_URL`,
    /// `CHORUS_AMQP_URL_FILE`, the TLS files, ...; only those given), for programs that start
    /// Chorus services themselves (the benchmark): never as arguments, which every local user
    /// sees in the process list. A URL file is passed as its path, so the secret stays in it.
    pub fn child_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let paths = [
            ("CHORUS_AMQP_URL_FILE", &self.amqp_url_file),
            ("CHORUS_AMQP_TLS_CA", &self.amqp_tls_ca),
            ("CHORUS_AMQP_TLS_CERT", &self.amqp_tls_cert),
            ("CHORUS_AMQP_TLS_KEY", &self.amqp_tls_key),
            ("CHORUS_REDIS_URL_FILE", &self.redis_url_file),
            ("CHORUS_REDIS_TLS_CA", &self.redis_tls_ca),
            ("CHORUS_REDIS_TLS_CERT", &self.redis_tls_cert),
            ("CHORUS_REDIS_TLS_KEY", &self.redis_tls_key),
        ];
        let urls = [
            ("CHORUS_AMQP_URL", &self.amqp_url),
            ("CHORUS_REDIS_URL", &self.redis_url),
        ];
        let timeouts = [
            (
                "CHORUS_AMQP_CONNECT_TIMEOUT_MS",
                self.amqp_connect_timeout_ms,
            ),
            ("CHORUS_REDIS_TIMEOUT_MS", self.redis_timeout_ms),
            ("CHORUS_PUBLISH_TIMEOUT_MS", self.publish_timeout_ms),
            ("CHORUS_AMQP_HEARTBEAT_S", u64::from(self.amqp_heartbeat_s)),
        ];
        let paths = paths
            .into_iter()
            .filter_map(|(name, path)| Some((name, path.as_ref()?.clone().into_os_string())));
        let urls = urls
            .into_iter()
            .filter_map(|(name, url)| Some((name, url.as_ref()?.into())));
        let timeouts = timeouts
            .into_iter()
            .map(|(name, ms)| (name, ms.to_string().into()));
        paths.chain(urls).chain(timeouts).collect()
    }

    /// The broker to connect to: its first node ([`ConnectArgs::amqp_nodes`]), for programs that
    /// talk to one node only.
    ///
    /// # Errors
    /// As [`ConnectArgs::amqp_nodes`].
    pub fn amqp(&self) -> Result<Endpoint, String> {
        self.amqp_nodes()?
            .into_iter()
            .next()
            .ok_or_else(|| "--amqp-url: no URL".to_owned())
    }

    /// The broker's nodes, in the order given: their URLs (from `--amqp-url`, `--amqp-url-file`
    /// or the default; comma-separated for a cluster, [`split_urls`]) and the TLS files, read
    /// now and used for every node. Never empty.
    ///
    /// # Errors
    /// Both the URL and its file are given, a file cannot be read or holds no PEM, the list
    /// has an empty entry, or TLS files come with an `amqp://` URL; one line for the user,
    /// passwords hidden.
    pub fn amqp_nodes(&self) -> Result<Vec<Endpoint>, String> {
        let urls = resolve_url(
            "--amqp-url",
            self.amqp_url.as_deref(),
            self.amqp_url_file.as_deref(),
            DEFAULT_AMQP_URL,
        )?;
        let files = TlsFiles {
            ca: self.amqp_tls_ca.clone(),
            cert: self.amqp_tls_cert.clone(),
            key: self.amqp_tls_key.clone(),
        };
        split_urls("--amqp-url", &urls)?
            .into_iter()
            .map(|url| {
                Endpoint::load(url, &files, "--amqp", "amqps")
                    .map(|node| node.with_heartbeat(self.amqp_heartbeat_s))
            })
            .collect()
    }

    /// Redis to connect to, as [`ConnectArgs::amqp`] for `--redis-*`.
    ///
    /// # Errors
    /// As [`ConnectArgs::amqp`], for the Redis flags and `redis://`.
    pub fn redis(&self) -> Result<Endpoint, String> {
        let url = resolve_url(
            "--redis-url",
            self.redis_url.as_deref(),
            self.redis_url_file.as_deref(),
            DEFAULT_REDIS_URL,
        )?;
        let files = TlsFiles {
            ca: self.redis_tls_ca.clone(),
            cert: self.redis_tls_cert.clone(),
            key: self.redis_tls_key.clone(),
        };
        Endpoint::load(url, &files, "--redis", "rediss")
    }

    /// Checks that both URLs and their TLS files can be used, so a typo fails at start-up with
    /// one clear line (exit 64 in the binaries).
    ///
    /// # Errors
    /// The first problem, with passwords hidden.
    pub fn validate(&self) -> Result<(), String> {
        for amqp in self.amqp_nodes()? {
            amqp.url().parse::<lapin::uri::AMQPUri>().map_err(|e| {
                format!(
                    "--amqp-url {}: {}",
                    amqp.redacted(),
                    hide_password(&e, amqp.url())
                )
            })?;
        }
        let redis = self.redis()?;
        crate::store::check_endpoint(&redis).map_err(|e| {
            format!(
                "--redis-url {}: {}",
                redis.redacted(),
                hide_password(&e, redis.url())
            )
        })?;
        Ok(())
    }

    /// Redis command timeout.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// Longest wait for one connection attempt to one broker node.
    pub fn amqp_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.amqp_connect_timeout_ms)
    }

    /// Publish confirm timeout.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// Settings of logging.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format; the level comes from RUST_LOG (default
    /// "info,lapin=warn,redis::cluster_handling=error").
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The default `--max-message-bytes`: 8 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 8 * 1024 * 1024;

/// Limits on what a consumer accepts.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest message body accepted on any queue; larger ones are dead-lettered.
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(u64).range(1024..))]
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

/// The kinds file of a deployment (`--kinds-file`), the same flag on every service and the CLI.
#[derive(Args, Clone, Debug, Default)]
pub struct KindsArgs {
    /// A kinds file (TOML) defining kinds whose steps are commands, HTTP endpoints or language
    /// models, next to the built-in kinds (docs/kinds.md, docs/llm.md). Give every service of a
    /// deployment the same file. A file that cannot be used stops the service at start-up (exit
    /// 64, one line naming the file, the kind and the key).
    #[arg(long = "kinds-file", env = "CHORUS_KINDS_FILE", value_name = "FILE")]
    pub kinds_file: Option<std::path::PathBuf>,
}

impl KindsArgs {
    /// `base` plus the kinds of `--kinds-file`, if given; steps' answers are limited to
    /// `max_answer_bytes` (the service's `--max-message-bytes`).
    ///
    /// # Errors
    /// The file cannot be used, as one line naming the file, the kind and the key.
    pub fn registry(
        &self,
        base: crate::kinds::Registry,
        max_answer_bytes: usize,
    ) -> Result<crate::kinds::Registry, String> {
        match &self.kinds_file {
            None => Ok(base),
            Some(path) => base
                .with_kinds_file(path, crate::kinds::file::LoadSettings { max_answer_bytes })
                .map_err(|e| e.to_string()),
        }
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

/// Where the credentials of `url` are: the byte range of the user info (between the scheme's
/// `:` and any slashes after it, and the *last* `@`), or `None` when there is no `@`. Written for
/// malformed URLs too (`amqp:user:pw@host`, a password holding `/` or `:`), since those are the
/// ones a client library quotes back in its error.
fn userinfo_range(url: &str) -> Option<std::ops::Range<usize>> {
    let at = url.rfind('@')?;
    let start = match url[..at].find(':') {
        Some(colon)
            if url[..colon]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            colon + 1 + url[colon + 1..at].chars().take_while(|&c| c == '/').count()
        }
        _ => 0,
    };
    Some(start..at)
}

/// The password of `url`'s user info: what follows the user name's `:`, or the whole user info
/// when it has no `:` (it may be a bare password). `None` without user info.
fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let userinfo = userinfo_range(url)?;
    let password_start = url[userinfo.clone()]
        .find(':')
        .map_or(userinfo.start, |colon| userinfo.start + colon + 1);
    Some(password_start..userinfo.end).filter(|range| !range.is_empty())
}

/// A URL with its password replaced by `***`, fit for a log line. Everything between the user
/// name and the last `@` counts as the password, so a password holding `/`, `:` or `@`, or a
/// URL missing its `//`, is hidden too.
pub fn redact_url(url: &str) -> String {
    match password_range(url) {
        Some(password) => format!("{}***{}", &url[..password.start], &url[password.end..]),
        None => url.to_owned(),
    }
}

/// `text` with the password of `url` (if it has one, found as [`redact_url`] finds it) replaced
/// by `***`: for messages of client libraries that may quote the URL they were given.
pub fn hide_password(text: &str, url: &str) -> String {
    match password_range(url) {
        Some(password) => text.replace(&url[password], "***"),
        None => text.to_owned(),
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

    #[test]
    fn passwords_are_hidden_in_messages() {
        let url = "rediss://chorus:s3cr%t@host:6380/1";
        assert_eq!(
            hide_password("cannot use rediss://chorus:s3cr%t@host", url),
            "cannot use rediss://chorus:***@host"
        );
        assert_eq!(hide_password("no secret", "redis://host:6379"), "no secret");
    }

    #[test]
    fn passwords_are_hidden_in_malformed_urls_too() {
        // A password holding `/` (base64) cut the authority short before.
        assert_eq!(
            redact_url("amqp://svc:ab/cd@host/%2f"),
            "amqp://svc:***@host/%2f"
        );
        // Typos that client libraries quote back in their errors.
        assert_eq!(redact_url("amqp:svc:pw@host"), "amqp:svc:***@host");
        assert_eq!(redact_url("amqp:/svc:pw@host"), "amqp:/svc:***@host");
        assert_eq!(redact_url("svc:pw@host"), "svc:***@host");
        assert_eq!(redact_url("amqp://p@ss:w@rd@host"), "amqp://p@ss:***@host");
        let url = "amqp:svc:pw@host";
        assert_eq!(
            hide_password("Invalid URL: 'amqp:svc:pw@host'", url),
            "Invalid URL: 'amqp:svc:***@host'"
        );
    }

    fn args(amqp_url: Option<&str>, amqp_url_file: Option<&std::path::Path>) -> ConnectArgs {
        ConnectArgs {
            amqp_url: amqp_url.map(str::to_owned),
            amqp_url_file: amqp_url_file.map(std::path::Path::to_path_buf),
            redis_url: None,
            ..ConnectArgs::from_urls("", "")
        }
    }

    #[test]
    fn a_url_comes_from_its_file_without_the_newline() {
        let path = std::env::temp_dir().join(format!("chorus-url-{}", std::process::id()));
        std::fs::write(&path, "amqps://svc:pw@host:5671/%2f\n").expect("works");
        let endpoint = args(None, Some(&path)).amqp().expect("works");
        assert_eq!(endpoint.url(), "amqps://svc:pw@host:5671/%2f");
        let both = args(Some("amqp://h"), Some(&path))
            .amqp()
            .expect_err("refused");
        assert!(both.contains("both given"), "{both}");
        std::fs::write(&path, "amqp://a:pw@h\namqp://b@h\n").expect("works");
        let two = args(None, Some(&path)).amqp().expect_err("refused");
        assert!(
            two.contains("one URL on one line") && !two.contains("pw"),
            "{two}"
        );
        std::fs::remove_file(&path).expect("works");
        let missing = args(None, Some(&path)).amqp().expect_err("refused");
        assert!(missing.starts_with("--amqp-url-file "), "{missing}");
        assert_eq!(
            args(None, None).amqp().expect("works").url(),
            DEFAULT_AMQP_URL
        );
    }

    #[test]
    fn a_cluster_is_a_comma_separated_list_of_urls() {
        let nodes = args(
            Some("amqp://a:pw@n1:5672/v, amqp://a:pw@n2:5672/v,amqp://n3"),
            None,
        )
        .amqp_nodes()
        .expect("works");
        let urls: Vec<&str> = nodes.iter().map(Endpoint::url).collect();
        assert!(
            nodes
                .iter()
                .all(|node| node.heartbeat_s() == Some(DEFAULT_AMQP_HEARTBEAT_S)),
            "every node asks for --amqp-heartbeat-s: {nodes:?}"
        );
        assert_eq!(
            urls,
            [
                "amqp://a:pw@n1:5672/v",
                "amqp://a:pw@n2:5672/v",
                "amqp://n3"
            ]
        );
        let gap = args(Some("amqp://a:pw@n1,,amqp://n3"), None)
            .amqp_nodes()
            .expect_err("refused");
        assert!(gap.contains("entry 2") && !gap.contains("pw"), "{gap}");
        let trailing = args(Some("amqp://n1,"), None)
            .validate()
            .expect_err("refused");
        assert!(trailing.contains("entry 2"), "{trailing}");
        let bad_second = args(Some("amqp://n1,amqp://a:s3cret@n2:notaport"), None)
            .validate()
            .expect_err("refused");
        assert!(
            bad_second.contains("n2") && !bad_second.contains("s3cret"),
            "{bad_second}"
        );
        let tls = ConnectArgs {
            amqp_tls_ca: Some("/nonexistent/ca.pem".into()),
            ..args(Some("amqp://n1,amqps://n2"), None)
        };
        let plain = tls.amqp_nodes().expect_err("refused");
        assert!(plain.contains("need a amqps:// URL"), "{plain}");
    }

    #[test]
    fn child_processes_get_url_files_as_paths() {
        let config = ConnectArgs {
            redis_url: None,
            redis_url_file: Some("/run/secrets/redis-url".into()),
            ..ConnectArgs::from_urls("amqps://svc:pw@host/%2f", "")
        };
        let env = config.child_env();
        let value = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string_lossy().into_owned())
        };
        assert_eq!(
            value("CHORUS_REDIS_URL_FILE").as_deref(),
            Some("/run/secrets/redis-url")
        );
        assert_eq!(value("CHORUS_REDIS_URL"), None);
        assert_eq!(
            value("CHORUS_AMQP_URL").as_deref(),
            Some("amqps://svc:pw@host/%2f")
        );
        assert_eq!(value("CHORUS_REDIS_TIMEOUT_MS").as_deref(), Some("5000"));
    }

    #[test]
    fn debug_and_errors_hide_passwords() {
        let config = args(Some("amqp://svc:s3cret@host:notaport/%2f"), None);
        assert!(!format!("{config:?}").contains("s3cret"));
        let error = config.validate().expect_err("refused");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
