//! Redis state of every task: key layout, the atomic Lua scripts of the fan-in, and leases.
//!
//! All keys of one task share the hash tag `{<task-id>}` (`chorus:{<id>}:task`, `...:plan`,
//! ...), so every script touches a single slot, as Redis Cluster requires; the connection is to one
//! server or to a cluster (`cluster`).
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `task` | hash | state, kind, options, input, counters (duplicates included), timestamps, cap, in-flight count, round |
//! | `waiters` | set | encoded [`ReplyTarget`]s that get the outcome |
//! | `plan` | hash | subtask id → encoded [`PlanEntry`] |
//! | `order` | list | subtask ids in plan order (spawned and added ones appended) |
//! | `wave` | list | ids of the first wave, published by the orchestrator (absent when it is `order`) |
//! | `pending` | set | ids of subtasks not settled yet |
//! | `results` | hash | subtask id → encoded [`SubtaskOutcome`] with attempts |
//! | `done` | hash | subtask id → `ok`, `failed` or `skipped` |
//! | `waiting` | hash | subtask id → dependencies not settled yet |
//! | `dependents` | hash | subtask id → space-separated ids that wait for it |
//! | `ready` | list | ids whose dependencies succeeded, waiting for a slot under the cap |
//! | `outbox` | set | ids released after planning whose publication is not confirmed yet |
//! | `worker-types` | hash | subtask id → worker type, for types other than `default` |
//! | `types` | hash | per worker type `<type>` total and `<type>:released/ok/failed/skipped` counts |
//! | `children` | set | ids of child tasks started by subtasks |
//! | `starts` | hash | subtask id, `plan` or `synth` → runs started and not finished (poison detection) |
//! | `outcome` | string | the encoded [`Outcome`], kept for the outcome TTL |
//! | `graph` | string | the dashboard's copy of the first subtasks' graph, JSON, read just before the outcome (`admin::graph::prepare`) and written by its script, same TTL |
//! | `plan-lease`, `synth-lease` | string | owner token of the process planning / synthesizing |
//! | `held` | string | `1` while a worker holds subtasks of the task (running or prefetched), set every 500 ms with a 5 s TTL by the worker's watch ([`Store::hold`]); the sweeper republishes nothing of a task held |
//! | `cancel` | string | the reason (empty for none) of a cancel that came before the task's claim, kept for the outcome TTL; the claim moves it to the task hash's `cancel` field |
//!
//! Beside the tasks' keys, one key of the deployment: `chorus:services` ([`SERVICES_KEY`]), a
//! hash of the live services' announcements (instance id → encoded
//! [`crate::services::Announcement`]).
//!
//! # Layout
//! One file per operation, each with its methods on [`Store`], its argument marshalling, its
//! reply parsing and the scripts it runs (in `lua/`, each opening with its `KEYS`, `ARGV` and
//! what it returns; the preludes in `lua/prelude/` are shared by several scripts and put in
//! front of them at compile time):
//! - `keys`: [`TaskKeys`] and the named groups of keys scripts share.
//! - `claim`: claiming a task id ([`Store::claim`], [`Store::claim_planned`]).
//! - `cancel`: keeping a cancel that came before the claim ([`Store::keep_cancel`]).
//! - `plan`: recording the plan (whole or in chunks), the confirmed prefix of the first wave,
//!   moving on to `running`.
//! - `results`: recording subtask results ([`Store::record_results`]).
//! - `revise`: another review round. `graph`: what `results` and `revise` share.
//! - `outbox`: released subtasks whose publication is not confirmed.
//! - `lease`: the [`Lease`] guard. `run`: runs counted and leased ([`Store::lease_run`]).
//! - `outcome`: storing the outcome once, reading it with its waiters, marking it delivered
//!   (which releases the synthesis lease).
//! - `connection`: the connection, rebuilt from the settings read anew when it breaks.
//!   `cluster`: a Redis Cluster's URL form and connection, and the connection type of both.
//! - `read`, `children`, `progress`: plain reads. `record`: the task hash parsed.
//!   `codec`: stored values encoded and decoded. `services`: the services' announcements.

use std::time::Duration;

use redis::AsyncConnectionConfig;

#[cfg(doc)]
use crate::protocol::{Outcome, PlanEntry, ReplyTarget, SubtaskOutcome};
use crate::{
    config::ConnectArgs,
    error::{StoreError, TlsRefused},
    tls::{self, Endpoint},
};

mod cancel;
mod children;
mod claim;
mod cluster;
mod codec;
pub(crate) use codec::decode_entry;
mod connection;
mod graph;
mod keys;
mod lease;
mod outbox;
mod outcome;
mod plan;
mod progress;
mod read;
mod record;
mod results;
mod revise;
mod run;
mod services;

#[cfg(test)]
mod tests;

pub use self::cluster::{check as check_endpoint, Clustered, SingleOrCluster};
pub use self::{
    cancel::KeptCancel,
    claim::{Claim, Planning, Submission},
    graph::Released,
    keys::TaskKeys,
    lease::Lease,
    outcome::Finished,
    progress::TypeProgress,
    record::{StoredResult, TaskRecord, TaskState},
    results::{Recorded, ResultStatus},
    run::{LeaseRequest, LeasedRun, Settled, SettledLease, PLAN_RUN},
    services::SERVICES_KEY,
};

/// A Redis connection (reconnecting by itself, every command time-bounded) and the scripts.
#[derive(Clone)]
pub struct Store {
    connection: cluster::Connection,
}

/// How many plan entries or result fields go to Redis per round trip.
pub const CHUNK: usize = 1000;

impl Store {
    /// Connects to Redis at `url` (`redis://host:port`, or a cluster's
    /// `redis+cluster://host:port,host:port`). Every command fails after `timeout` instead of
    /// hanging.
    ///
    /// # Errors
    /// A malformed URL or an unreachable server (or cluster).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_to(&Endpoint::new(url), timeout).await
    }

    /// Connects to Redis at `endpoint`, with its TLS files for a `rediss://` URL; otherwise as
    /// [`Store::connect`]. Reconnects to the same server with the same files.
    ///
    /// # Errors
    /// [`StoreError::TlsRefused`] when the TLS handshake fails (Redis's certificate does not
    /// verify, or it refuses ours); [`StoreError::Redis`] when Redis cannot be reached, refuses
    /// the credentials, or the URL is invalid.
    pub async fn connect_to(endpoint: &Endpoint, timeout: Duration) -> Result<Self, StoreError> {
        let source = connection::Source::Fixed(endpoint.clone());
        Self::open(source, endpoint, timeout).await
    }

    /// Connects to the Redis of `connect` (`--redis-url` or its file, the TLS files,
    /// `--redis-timeout-ms`), and reads them again each time the connection is rebuilt, so a
    /// rotated password, URL or certificate is used from the next reconnect on.
    ///
    /// # Errors
    /// As [`Store::connect_to`], and [`StoreError::Settings`] when a file cannot be read.
    pub async fn connect_settings(connect: &ConnectArgs) -> Result<Self, StoreError> {
        let endpoint = connect.redis().map_err(StoreError::Settings)?;
        let source = connection::Source::Settings(connect.clone());
        Self::open(source, &endpoint, connect.redis_timeout()).await
    }

    async fn open(
        source: connection::Source,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        let connection = match cluster::seeds(endpoint.url()).map_err(StoreError::Settings)? {
            Some(seeds) => cluster::connect(endpoint, seeds, timeout).await,
            None => connection::Reconnecting::connect(source, endpoint, config)
                .await
                .map(cluster::Connection::Single),
        };
        connection
            .map(|connection| Self { connection })
            .map_err(|error| match tls::refusal(&error) {
                Some(reason) => StoreError::TlsRefused(TlsRefused {
                    service: "Redis",
                    host: endpoint.host().to_owned(),
                    reason,
                }),
                None => StoreError::Redis(error),
            })
    }

    /// Connects as a service starts: [`Store::connect_settings`], then
    /// [`Store::warn_about_settings`].
    ///
    /// # Errors
    /// As [`Store::connect_settings`].
    pub async fn connect_service(connect: &ConnectArgs) -> Result<Self, StoreError> {
        let store = Self::connect_settings(connect).await?;
        store.warn_about_settings().await;
        Ok(store)
    }

    /// Asks Redis for a `PING` (readiness probes, `observe::health`).
    ///
    /// # Errors
    /// Redis does not answer or refuses (the message names no password).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// A handle on the connection (also for scripts kept beside the modules that use them).
    pub(crate) fn conn(&self) -> cluster::Connection {
        self.connection.clone()
    }

    /// Logs a warning for every server setting that weakens Chorus's guarantees, or one info
    /// line when the Redis user may not read settings (`CONFIG GET` outside its ACL).
    pub async fn warn_about_settings(&self) {
        let mut conn = self.conn();
        let required: [(&str, &[&str]); 3] = [
            ("appendonly", &["yes"]),
            ("appendfsync", &["everysec", "always"]),
            ("maxmemory-policy", &["noeviction"]),
        ];
        for (name, accepted) in required {
            let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(pair) if pair.get(1).is_some_and(|v| accepted.contains(&v.as_str())) => {}
                Ok(pair) => tracing::warn!(
                    setting = name,
                    value = pair.get(1).map(String::as_str).unwrap_or("?"),
                    wanted = accepted.join(" or "),
                    "Redis setting weakens Chorus's guarantees (see docs/reliability.md)"
                ),
                // A least-privileged ACL user (docs/security.md) may not run CONFIG: the
                // settings only feed this warning, so the service goes on, once said.
                Err(error) if error.code() == Some("NOPERM") => {
                    tracing::info!(
                        "the Redis user may not run CONFIG GET, so the server's appendonly, appendfsync and maxmemory-policy go unchecked: check them yourself (docs/reliability.md)"
                    );
                    return;
                }
                Err(error) => {
                    tracing::debug!(setting = name, %error, "cannot read Redis setting");
                }
            }
        }
    }
}
