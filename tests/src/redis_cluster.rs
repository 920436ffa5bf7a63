//! The private Redis Cluster of a test run (`deploy/redis-cluster.sh`: 3 masters, 3 replicas),
//! used instead of the single Redis when `CHORUS_TEST_REDIS_CLUSTER_PORT` names its first port.
//!
//! A cluster has only database 0, so tests on it are isolated by running one at a time
//! (`--test-threads=1`, as `deploy/test.sh` runs them) and flushing every master as each test
//! starts ([`TestEnv::new`](crate::TestEnv::new)).

use std::process::Command;

use chorus_shared::store::SingleOrCluster;
use redis::{aio::MultiplexedConnection, cluster::ClusterClient, cluster_async::ClusterConnection};

use crate::repo_dir;

/// The first port of the test cluster, when the tests run on one.
pub fn port() -> Option<u16> {
    std::env::var("CHORUS_TEST_REDIS_CLUSTER_PORT")
        .ok()?
        .parse()
        .ok()
}

/// The ports of the cluster's six nodes.
pub fn ports(first: u16) -> Vec<u16> {
    (first..first + 6).collect()
}

/// The cluster URL Chorus takes, every node a seed.
pub fn url(first: u16) -> String {
    let seeds: Vec<String> = ports(first)
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    format!("redis+cluster://{}", seeds.join(","))
}

/// The first port of the TLS-only test cluster (`deploy/redis-cluster.sh` with
/// `CHORUS_REDIS_CLUSTER_TLS_DIR`), when the tests run beside one:
/// `CHORUS_TEST_REDIS_TLS_CLUSTER_PORT`.
pub fn tls_port() -> Option<u16> {
    std::env::var("CHORUS_TEST_REDIS_TLS_CLUSTER_PORT")
        .ok()?
        .parse()
        .ok()
}

/// The URL of the TLS-only cluster of `first` with its first node as the only seed
/// (`rediss+cluster://`): the client learns the others from the slot map.
pub fn tls_url(first: u16) -> String {
    format!("rediss+cluster://127.0.0.1:{first}")
}

/// A `deploy/redis-cluster.sh` command aimed at the test cluster.
pub fn script(first: u16, args: &[&str]) -> Command {
    let mut command = Command::new(repo_dir().join("deploy/redis-cluster.sh"));
    command
        .args(args)
        .env("CHORUS_STATE_DIR", &crate::services().state_dir)
        .env("CHORUS_REDIS_CLUSTER_PORT", first.to_string());
    command
}

/// A `deploy/redis-cluster.sh` command aimed at the TLS-only test cluster of `first`: its
/// nodes' files, and the client certificate its redis-cli calls present, from the test PKI.
pub fn tls_script(first: u16, args: &[&str]) -> Command {
    let mut command = script(first, args);
    command.env(
        "CHORUS_REDIS_CLUSTER_TLS_DIR",
        crate::services().state_dir.join("tls"),
    );
    command
}

/// Runs a `deploy/redis-cluster.sh` `command`; its standard output, trimmed. Panics with the
/// script's error output when it fails.
pub fn run(mut command: Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "deploy/redis-cluster.sh {:?} failed: {}",
        command.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The `MOVED`, `ASK` and `TRYAGAIN` replies a cluster's nodes have sent so far, in that
/// order: `command` is a `redirections` command of [`script`] or [`tls_script`]
/// (`INFO errorstats` of every live node, summed).
pub fn redirections(command: Command) -> [u64; 3] {
    let line = run(command);
    let count = |name: &str| -> u64 {
        let mut words = line.split_whitespace();
        words.find(|word| *word == name);
        words.next().and_then(|n| n.parse().ok()).unwrap()
    };
    [count("MOVED"), count("ASK"), count("TRYAGAIN")]
}

/// A test's own connection to Redis: the single server's database, or the cluster (the
/// store's type around a plain connection).
pub type TestRedis = SingleOrCluster<MultiplexedConnection>;

/// A connection to the cluster of `first`.
pub async fn connect(first: u16) -> ClusterConnection {
    let seeds: Vec<String> = ports(first)
        .iter()
        .map(|port| format!("redis://127.0.0.1:{port}"))
        .collect();
    ClusterClient::new(seeds)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}
