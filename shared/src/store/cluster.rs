//! Redis Cluster: the `redis+cluster://` form of `--redis-url` (several seed nodes, one set of
//! credentials), the cluster client built from it, and [`Connection`], which every [`Store`]
//! command and script runs on, one server's or a cluster's.
//!
//! redis-rs's cluster client (`cluster_async`) learns the slot map from any seed, sends each
//! command to the master of its key's slot, follows `MOVED` and `ASK` (a resharding), retries
//! `TRYAGAIN` and `CLUSTERDOWN` with a backoff ([`RETRY_WAIT`]) and refreshes the slot map after
//! a failover. What it needs from Chorus is that all keys of one script share a slot: they carry
//! one hash tag (`chorus:{<task>}:...`, `store::keys`; the audit is in `cluster/tests.rs`).
//!
//! Unlike a single server's connection, a cluster's keeps the credentials and TLS files it
//! started with: redis-rs reconnects to each node by itself.
//!
//! A command the cluster still refuses when redis-rs gives up (`MOVED`, `ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN`: a slot that moves, or a failover) is tried again here, after a short pause,
//! within the command's timeout ([`Clustered`]).
//!
//! [`Store`]: super::Store

use std::{io, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::{
    aio::ConnectionLike,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use super::connection::{self, Reconnecting};
use crate::tls::Endpoint;

/// The URL schemes of a cluster and the scheme of its nodes: plain and TLS.
const SCHEMES: [(&str, &str); 2] = [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// The seed nodes of a cluster URL, `redis+cluster://[user:password@]host:port[,host:port...][/0]`
/// (`rediss+cluster://` for TLS), as one `redis://` (`rediss://`) URL per node with the same
/// credentials; `Ok(None)` for a single server's URL. Any node of the cluster will do as a
/// seed; several let a service start while one of them is down.
///
/// # Errors
/// No host, an empty host between commas, a query, or a database other than 0 (Redis Cluster
/// has only database 0); the message never quotes the URL.
pub fn seeds(url: &str) -> Result<Option<Vec<String>>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(None);
    };
    let Some((_, node_scheme)) = SCHEMES
        .iter()
        .find(|(cluster, _)| cluster.eq_ignore_ascii_case(scheme))
    else {
        return Ok(None);
    };
    // Everything before the last `@` is the user and password, as `config::redact_url` reads it.
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (format!("{userinfo}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, database) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(database, "" | "0") {
        return Err(format!(
            "a Redis Cluster has only database 0, the URL asks for /{database}"
        ));
    }
    if hosts.contains('?') {
        return Err("a cluster URL takes no query settings".to_owned());
    }
    hosts
        .split(',')
        .map(str::trim)
        .map(|host| {
            if host.is_empty() {
                Err(format!("{scheme}:// needs host:port[,host:port...]"))
            } else {
                Ok(format!("{node_scheme}://{credentials}{host}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The waits of redis-rs between two tries of a command the cluster answered `TRYAGAIN` or
/// `CLUSTERDOWN`, in ms: `(min, max, factor)`, the n-th wait drawn from
/// `min..min(max, factor * 2^n)`.
///
/// A script whose keys are half migrated by a resharding gets `TRYAGAIN` until the last of its
/// slot's keys has moved (the Redis Cluster specification, "Live reconfiguration": the client
/// should try again later), a matter of milliseconds per key. redis-rs's defaults wait at least
/// 1,280 ms before trying again, longer than a `--redis-timeout-ms` of 1,000 (which bounds its
/// tries too), so such a script failed as "timed out"; these waits try again within the
/// command's time. Its 16 tries (redis-rs's default) wait about 1.7 s in all; a refusal that
/// outlasts them is tried again by [`Clustered::request`] until the timeout.
/// Tested by `faults_redis_cluster.rs` (`a_script_meeting_tryagain_*`).
const RETRY_WAIT: (u64, u64, u64) = (10, 250, 10);

/// The cluster client of `endpoint`'s `seeds` (from [`seeds`]), with its TLS files; every
/// connection attempt and every command (its redirections and retries included) is bounded by
/// `timeout`.
///
/// # Errors
/// A seed's URL does not parse, or the seeds differ in credentials or TLS.
fn client(
    endpoint: &Endpoint,
    seeds: Vec<String>,
    timeout: Duration,
) -> RedisResult<ClusterClient> {
    let (min_wait, max_wait, factor) = RETRY_WAIT;
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .min_retry_wait(min_wait)
        .max_retry_wait(max_wait)
        .retry_wait_formula(factor, 2);
    if let Some(certificates) = endpoint.redis_certificates() {
        builder = builder.certs(certificates);
    }
    builder.build()
}

/// Checks that `endpoint`'s URL can be used, a single server's or a cluster's, without
/// connecting (`ConnectArgs::validate`).
///
/// # Errors
/// The URL is malformed, or a cluster URL breaks a rule of [`seeds`]; one line.
pub fn check(endpoint: &Endpoint) -> Result<(), String> {
    match seeds(endpoint.url())? {
        Some(seeds) => client(endpoint, seeds, Duration::from_secs(1)).map(drop),
        None => endpoint.redis_client().map(drop),
    }
    .map_err(|error| error.to_string())
}

/// A connection to one Redis server (of type `S`) or to a Redis Cluster, running each command
/// on whichever it holds; cheap to clone when `S` is (one shared connection, or one per node of
/// the cluster). The store's is [`Connection`]; a program with a plain connection to one
/// server (the tests) uses the same type around its own.
#[derive(Clone)]
pub enum SingleOrCluster<S> {
    /// One server.
    Single(S),
    /// A cluster, following its slot map.
    Cluster(Clustered),
}

/// A cluster's connection and the bound of each command, redirections and retries included.
#[derive(Clone)]
pub struct Clustered {
    connection: ClusterConnection,
    timeout: Duration,
}

/// The error codes of a cluster node that refused a command without running it, so that it is
/// safe to send again (a script included): the slot is served elsewhere (`MOVED`), is being
/// migrated (`ASK`), has its keys split between two nodes mid-migration (`TRYAGAIN`), or has no
/// master (`CLUSTERDOWN`). The Redis Cluster specification, "Redirection and resharding": each
/// comes from the node's routing check before the command runs.
const REFUSED_BEFORE_RUNNING: [&str; 4] = ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"];

/// Whether `error` is a refusal of [`REFUSED_BEFORE_RUNNING`].
fn refused_before_running(error: &RedisError) -> bool {
    error
        .code()
        .is_some_and(|code| REFUSED_BEFORE_RUNNING.contains(&code))
}

/// The pauses between two tries of a refused command: from 10 ms, doubling to 200 ms, with
/// jitter, so that commands refused together do not come back together.
fn refusal_pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(200))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Clustered {
    /// `connection`, each of its commands bounded by `timeout` (refusals tried again within it,
    /// see [`Clustered::request`]).
    pub fn new(connection: ClusterConnection, timeout: Duration) -> Self {
        Self {
            connection,
            timeout,
        }
    }

    /// Runs `cmd`, trying it again while the cluster refuses it before running it, until it is
    /// answered or `timeout` has passed since the first try.
    ///
    /// redis-rs follows `ASK` by sending `ASKING` and then the command on the node's shared
    /// (multiplexed) connection: another command slipping in between takes the one-time
    /// `ASKING` flag, the node answers `MOVED` back to the migrating node, which answers `ASK`
    /// again, and under load a script can spend all of redis-rs's tries in this loop during a
    /// resharding (as sewenew/redis-plus-plus#281 describes for another client). A pause breaks
    /// the lockstep.
    ///
    /// # Errors
    /// Any other error the cluster or redis-rs reports, or a timeout (`io::ErrorKind::TimedOut`)
    /// when no answer came within `timeout`, refusals included.
    async fn request(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut pauses = refusal_pauses();
        let tries = async {
            loop {
                let mut connection = self.connection.clone();
                match connection.req_packed_command(cmd).await {
                    Err(error) if refused_before_running(&error) => {
                        let pause = pauses.next().unwrap_or(Duration::from_millis(200));
                        tracing::debug!(%error, pause_ms = pause.as_millis(), "Redis Cluster refused a command; trying it again");
                        tokio::time::sleep(pause).await;
                    }
                    answer => return answer,
                }
            }
        };
        tokio::time::timeout(self.timeout, tries)
            .await
            .unwrap_or_else(|_| Err(RedisError::from(io::Error::from(io::ErrorKind::TimedOut))))
    }
}

/// The store's connection: one server, reconnecting from its settings read anew, or a cluster.
pub(crate) type Connection = SingleOrCluster<Reconnecting>;

/// Connects to the cluster of `seeds` (from [`seeds`]), bounding each attempt and command by
/// `timeout`.
///
/// # Errors
/// No seed can be reached, or one refuses the TLS handshake or the credentials; the message
/// never holds the URL's password.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    seeds: Vec<String>,
    timeout: Duration,
) -> RedisResult<Connection> {
    let client = client(endpoint, seeds.clone(), timeout)
        .map_err(|error| connection::redacted(error, endpoint))?;
    match client.get_async_connection().await {
        Ok(connection) => Ok(Connection::Cluster(Clustered::new(connection, timeout))),
        Err(error) => {
            let refused = refused_handshake(endpoint, &seeds, timeout).await;
            Err(connection::redacted(refused.unwrap_or(error), endpoint))
        }
    }
}

/// The error of a seed that refused the TLS handshake, if one did. redis-rs's cluster client
/// reports a failed start as text only (`create_initial_connections` keeps the `to_string()`
/// of the last node's error), so `tls::refusal` finds no TLS error under it: the seeds are
/// asked again as single servers with the same TLS files, all at once and within one
/// `timeout`, and the first handshake error found is returned. Nothing is asked of a plain
/// cluster.
async fn refused_handshake(
    endpoint: &Endpoint,
    seeds: &[String],
    timeout: Duration,
) -> Option<RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let probes = seeds
        .iter()
        .filter(|seed| seed.starts_with("rediss://"))
        .filter_map(|seed| endpoint.redis_client_at(seed).ok())
        .map(|client| {
            let config = config.clone();
            async move {
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .err()
                    .filter(|error| crate::tls::refusal(error).is_some())
            }
        });
    let found = tokio::time::timeout(timeout, futures::future::join_all(probes)).await;
    found.ok()?.into_iter().flatten().next()
}

impl<S: ConnectionLike + Send> ConnectionLike for SingleOrCluster<S> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => Box::pin(cluster.request(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            // Not tried again here: a pipeline may have run in part before a refusal.
            Self::Cluster(cluster) => cluster
                .connection
                .req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(cluster) => cluster.connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests;
