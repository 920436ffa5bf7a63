//! Redis Cluster: the `redis+cluster://` form of `--redis-url` (several seed nodes, one set of
//! credentials), the cluster client built from it, and [`Connection`], which every [`Store`]
//! command and script runs on, one server's or a cluster's.
//!
//! redis-rs's cluster client (`cluster_async`) learns the slot map from any seed, sends each
//! command to the master of its key's slot, follows `MOVED` and `ASK` (a resharding), retries
//! `TRYAGAIN` and `CLUSTERDOWN` with a backoff and refreshes the slot map after a failover. What
//! it needs from Chorus is that all keys of one script share a slot: they carry one hash tag
//! (`chorus:{<task>}:...`, `store::keys`; the audit is in `cluster/tests.rs`).
//!
//! Unlike a single server's connection, a cluster's keeps the credentials and TLS files it
//! started with: redis-rs reconnects to each node by itself.
//!
//! [`Store`]: super::Store

use std::time::Duration;

use redis::{
    aio::ConnectionLike,
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, RedisResult, Value,
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
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(timeout);
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
    Cluster(ClusterConnection),
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
    let client =
        client(endpoint, seeds, timeout).map_err(|error| connection::redacted(error, endpoint))?;
    client
        .get_async_connection()
        .await
        .map(Connection::Cluster)
        .map_err(|error| connection::redacted(error, endpoint))
}

impl<S: ConnectionLike + Send> ConnectionLike for SingleOrCluster<S> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
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
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests;
