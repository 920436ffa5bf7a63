//! Rolling out a kind one service at a time: every service announces the kinds it serves (with
//! each definition's fingerprint) in Redis, and a service given work of a kind it lacks, or
//! of another definition of it, leaves that work to a live service that has it instead of
//! failing it (docs/operations.md, "Rolling out a kind").
//!
//! - [`Announcer`]: writes this process's [`Announcement`] every [`REFRESH`], valid for
//!   [`EXPIRY`]; removes it on an orderly stop.
//! - [`Directory`]: the other live services' announcements, read only on the rare path where
//!   a service lacks something (and then cached for [`CACHE`]).
//! - [`place_subtask`], [`place_task`], [`place_synthesis`]: the decisions, as plain functions.
//! - [`catalogue`]: what `chorus kinds` prints, from the announcements.
//! - [`defer`]: a message sent back to its queue through a delay bucket, its deferrals counted
//!   in [`topology::DEFERRALS_HEADER`].

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    amqp::{self, Outgoing, Publisher},
    clock::now_ms,
    error::{ServiceError, StoreError},
    kinds::Registry,
    protocol,
    store::Store,
    topology,
};

mod catalogue;
#[cfg(test)]
mod tests;

pub use catalogue::{catalogue, Catalogue, Definition, KindView, Server};

/// How often a service rewrites its announcement.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long an announcement counts as live after it was written: five refreshes, so a
/// service that misses a few (Redis slow, a long pause) is not taken for gone.
pub const EXPIRY: Duration = Duration::from_secs(10);
/// How long a read of the announcements is reused.
pub const CACHE: Duration = Duration::from_secs(1);
/// How long a deferred message waits before it is delivered again (it goes to the nearest
/// delay bucket, [`topology::delay_bucket_for`]).
pub const DEFER_DELAY: Duration = Duration::from_secs(1);
/// Deferrals of one message after which it is handled here after all (about two minutes of
/// deferring): a subtask of a kind this worker lacks then fails naming the kinds it knows, one
/// of another definition runs with this one, a task request of a kind this orchestrator
/// lacks is rejected.
pub const MAX_DEFERRALS: u32 = 120;
/// Refreshes between two prunings of expired announcements (about a minute).
const PRUNE_EVERY: u32 = 30;

/// What a service does, as announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Plans tasks (`chorus-orchestrator`).
    Orchestrator,
    /// Runs subtasks (`chorus-worker`).
    Worker,
    /// Records results, reviews and synthesizes (`chorus-synthesizer`).
    Synthesizer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Orchestrator => "orchestrator",
            Self::Worker => "worker",
            Self::Synthesizer => "synthesizer",
        })
    }
}

/// One live service's announcement, the value of its field in
/// [`crate::store::SERVICES_KEY`] (MessagePack, a map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// What the service does.
    pub role: Role,
    /// Kind name → fingerprint of the definition the service runs
    /// ([`crate::kinds::DynKind::fingerprint`]).
    pub kinds: BTreeMap<String, String>,
    /// Kind name → each step and what runs it ([`crate::kinds::DynKind::steps`]; a Rust
    /// kind's `plan`, `handle`, `review` and `synthesize` are `rust`),
    /// for `chorus kinds`.
    #[serde(default)]
    pub steps: BTreeMap<String, Vec<(String, String)>>,
    /// Worker types served (workers only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_types: Vec<String>,
    /// Handler slots per worker type served (workers only): what can run at once, whatever the
    /// prefetch holds besides; `chorus status` caps its "running" with their sum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u32>,
    /// Until when it counts as live, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Announcement {
    /// This announcement with the handler `slots` of each worker type (workers only).
    #[must_use]
    pub fn with_slots(mut self, slots: BTreeMap<String, u32>) -> Self {
        self.slots = slots;
        self
    }

    /// What a service of `role` holding `registry` announces (`worker_types`: the types a
    /// worker serves, empty for the other roles); `expires_at_ms` is set as it is written.
    pub fn of(role: Role, registry: &Registry, worker_types: Vec<String>) -> Self {
        let steps = registry
            .names()
            .into_iter()
            .filter_map(|name| {
                let kind = registry.get(&name)?;
                let mut steps = kind.steps();
                if steps.is_empty() {
                    // A Rust kind: its steps are its code.
                    steps = ["plan", "handle", "review", "synthesize"]
                        .into_iter()
                        .map(|step| (step.to_owned(), "rust".to_owned()))
                        .collect();
                }
                Some((name, steps))
            })
            .collect();
        Self {
            role,
            kinds: registry.fingerprints(),
            steps,
            worker_types,
            slots: BTreeMap::new(),
            expires_at_ms: 0,
        }
    }

    /// Whether it still counts at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }

    /// Whether this service has kind `kind` (with `fingerprint`, when given).
    fn has(&self, kind: &str, fingerprint: Option<&str>) -> bool {
        self.kinds
            .get(kind)
            .is_some_and(|theirs| fingerprint.is_none_or(|wanted| wanted == theirs))
    }
}

/// A process's instance id in the announcements: host, process id and a random part, so a
/// restarted process (same host and pid after a container restart) is another instance.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &random[..8])
}

/// Keeps this process's announcement in Redis while it runs.
pub struct Announcer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Writes `announcement` for `instance` now (so the service is known before it consumes
    /// anything), then every [`REFRESH`] in the background, pruning expired announcements
    /// of other services now and then.
    ///
    /// # Errors
    /// The first write failed (Redis unreachable or refusing the key): the service does not
    /// start, as with any other Redis failure at start-up.
    pub async fn start(
        store: Store,
        instance: String,
        announcement: Announcement,
    ) -> Result<Self, StoreError> {
        write(&store, &instance, &announcement).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(refresh(store, instance, announcement, stop.clone()));
        Ok(Self { stop, task })
    }

    /// Stops refreshing and removes the announcement, so that nobody defers to this service
    /// any more (a removal that fails is logged; the announcement then expires by itself).
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "announcement refresher ended abnormally");
        }
    }
}

/// Writes `announcement` valid for [`EXPIRY`] from now.
async fn write(
    store: &Store,
    instance: &str,
    announcement: &Announcement,
) -> Result<(), StoreError> {
    let fresh = Announcement {
        expires_at_ms: now_ms().saturating_add(EXPIRY.as_millis() as u64),
        ..announcement.clone()
    };
    let body = protocol::encode(&fresh).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.announce(instance, &body).await
}

/// The refresher: rewrites the announcement until `stop`, then removes it.
async fn refresh(
    store: Store,
    instance: String,
    announcement: Announcement,
    stop: CancellationToken,
) {
    let mut rounds: u32 = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = stop.cancelled() => break,
        }
        if let Err(error) = write(&store, &instance, &announcement).await {
            tracing::warn!(%error, "cannot refresh this service's announcement; retrying");
        }
        rounds = rounds.wrapping_add(1);
        if rounds % PRUNE_EVERY == 0 {
            prune(&store).await;
        }
    }
    if let Err(error) = store.withdraw(std::slice::from_ref(&instance)).await {
        tracing::warn!(%error, "cannot remove this service's announcement; it expires by itself");
    }
}

/// Removes announcements that expired (services that died without removing theirs).
async fn prune(store: &Store) {
    let Ok(all) = store.announcements().await else {
        return;
    };
    let now = now_ms();
    let expired: Vec<String> = all
        .into_iter()
        .filter(|(_, body)| {
            protocol::decode::<Announcement>(body).map_or(true, |a| !a.is_live(now))
        })
        .map(|(instance, _)| instance)
        .collect();
    if let Err(error) = store.withdraw(&expired).await {
        tracing::debug!(%error, "cannot prune expired announcements");
    }
}

/// The announcements of every live service, as one read.
///
/// # Errors
/// Redis failed.
pub async fn read_live(store: &Store) -> Result<Vec<(String, Announcement)>, StoreError> {
    let now = now_ms();
    let mut live: Vec<(String, Announcement)> = store
        .announcements()
        .await?
        .into_iter()
        .filter_map(|(instance, body)| {
            // An announcement that does not decode is another version's or garbage: ignored.
            let announcement: Announcement = protocol::decode(&body).ok()?;
            announcement
                .is_live(now)
                .then_some((instance, announcement))
        })
        .collect();
    live.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(live)
}

/// The other live services' announcements, read on demand and cached for [`CACHE`]; also
/// remembers what was logged, so that each mismatch is said once per process.
pub struct Directory {
    store: Store,
    instance: String,
    /// This process's kinds' fingerprints, computed once: looked up for every message.
    local: BTreeMap<String, String>,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Announcement>>)>>,
    said: Mutex<HashSet<String>>,
}

impl Directory {
    /// A directory of the services other than `instance` (this process's own id), for a
    /// process holding `registry`.
    pub fn new(store: Store, instance: String, registry: &Registry) -> Self {
        Self {
            store,
            instance,
            local: registry.fingerprints(),
            cache: tokio::sync::Mutex::new(None),
            said: Mutex::new(HashSet::new()),
        }
    }

    /// This process's fingerprint of kind `kind`; `None` when it lacks the kind.
    pub fn local(&self, kind: &str) -> Option<&str> {
        self.local.get(kind).map(String::as_str)
    }

    /// The other live services' announcements (read at most once per [`CACHE`]).
    ///
    /// # Errors
    /// Redis failed.
    pub async fn peers(&self) -> Result<Arc<Vec<Announcement>>, StoreError> {
        self.read(false).await
    }

    /// The other live services' announcements read now (and cached): before a final decision
    /// (a rejection, a failure) that a cached read could get wrong just after a service
    /// started.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn peers_now(&self) -> Result<Arc<Vec<Announcement>>, StoreError> {
        self.read(true).await
    }

    async fn read(&self, now: bool) -> Result<Arc<Vec<Announcement>>, StoreError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, peers)) = cache.as_ref() {
            if !now && at.elapsed() < CACHE {
                return Ok(Arc::clone(peers));
            }
        }
        let peers: Arc<Vec<Announcement>> = Arc::new(
            read_live(&self.store)
                .await?
                .into_iter()
                .filter(|(instance, _)| *instance != self.instance)
                .map(|(_, announcement)| announcement)
                .collect(),
        );
        *cache = Some((Instant::now(), Arc::clone(&peers)));
        Ok(peers)
    }

    /// Whether `notice` is said for the first time in this process: a mismatch is logged
    /// once, not once per message.
    pub fn first_time(&self, notice: &str) -> bool {
        self.said
            .lock()
            .map(|mut said| said.insert(notice.to_owned()))
            .unwrap_or(false)
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Handle it here.
    Run,
    /// Leave it for a live service that has what it needs.
    Defer,
    /// Nobody live has its kind: refuse or fail it as before (naming the kinds known).
    Unknown,
}

/// Whether the announcements need reading at all for a message of a kind this process has
/// with fingerprint `local` (`None`: lacks it) that was planned with `wanted`: only when this
/// process lacks the kind or has another definition of it.
pub fn needs_peers(local: Option<&str>, wanted: Option<&str>) -> bool {
    match (local, wanted) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(local), Some(wanted)) => local != wanted,
    }
}

/// Where a subtask of `kind` and `worker_type`, planned with fingerprint `wanted`, goes in a
/// worker with fingerprint `local` (`None`: lacks the kind) after `deferrals`:
/// - lacking the kind: deferred while any live service has it (a roll-out under way), else
///   unknown;
/// - another definition: deferred while a live worker of the type has the wanted one, else
///   run here (the planned definition is gone: rolled forward);
/// - past [`MAX_DEFERRALS`], handled here whatever it is.
pub fn place_subtask(
    local: Option<&str>,
    wanted: Option<&str>,
    kind: &str,
    worker_type: &str,
    peers: &[Announcement],
    deferrals: u32,
) -> Placement {
    let exhausted = deferrals >= MAX_DEFERRALS;
    match local {
        None if !exhausted && peers.iter().any(|peer| peer.has(kind, None)) => Placement::Defer,
        None => Placement::Unknown,
        Some(_) if exhausted || !needs_peers(local, wanted) => Placement::Run,
        Some(_) => {
            let wanted_live = peers.iter().any(|peer| {
                peer.role == Role::Worker
                    && peer.worker_types.iter().any(|t| t == worker_type)
                    && peer.has(kind, wanted)
            });
            if wanted_live {
                Placement::Defer
            } else {
                Placement::Run
            }
        }
    }
}

/// Where a task request of `kind` goes in an orchestrator that has it (`known`) or not,
/// after `deferrals`: one it lacks is deferred while any live service has the kind (a
/// roll-out under way) and refused at once when none does.
pub fn place_task(known: bool, kind: &str, peers: &[Announcement], deferrals: u32) -> Placement {
    if known {
        Placement::Run
    } else if deferrals < MAX_DEFERRALS && peers.iter().any(|peer| peer.has(kind, None)) {
        Placement::Defer
    } else {
        Placement::Unknown
    }
}

/// Whether the synthesis (or review) of a settled task of `kind` planned with `wanted` is left
/// to another synthesizer by one with fingerprint `local` (`None`: lacks the kind), after
/// `hops` hand-overs:
/// - lacking the kind: while any live service has it (a roll-out under way: a synthesizer with
///   it may be on its way);
/// - another definition: while a live synthesizer has the wanted one.
///
/// Otherwise, and past [`MAX_DEFERRALS`] hops, it runs here (and fails as before when this one
/// lacks the kind).
pub fn place_synthesis(
    local: Option<&str>,
    wanted: Option<&str>,
    kind: &str,
    peers: &[Announcement],
    hops: u32,
) -> Placement {
    if hops >= MAX_DEFERRALS || !needs_peers(local, wanted) {
        return Placement::Run;
    }
    let elsewhere = match local {
        None => peers.iter().any(|peer| peer.has(kind, None)),
        Some(_) => peers
            .iter()
            .any(|peer| peer.role == Role::Synthesizer && peer.has(kind, wanted)),
    };
    if elsewhere {
        Placement::Defer
    } else {
        Placement::Run
    }
}

/// The kinds known to this process (`local`) and to the live services of `role` among
/// `peers`, sorted: what a refusal of an unknown kind names.
pub fn known_kinds(local: &[String], peers: &[Announcement], role: Role) -> Vec<String> {
    let mut known: BTreeSet<String> = local.iter().cloned().collect();
    for peer in peers.iter().filter(|peer| peer.role == role) {
        known.extend(peer.kinds.keys().cloned());
    }
    known.into_iter().collect()
}

/// How many times the message with `properties` was deferred so far.
pub fn deferrals(properties: &BasicProperties) -> u32 {
    amqp::header_u64(properties, topology::DEFERRALS_HEADER)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Headers a broker sets on a message as it is delivered again or dead-lettered: a deferred
/// copy is a new message, not a redelivery (which the services run alone and count).
const BROKER_HEADERS: [&str; 3] = [
    topology::DELIVERY_COUNT_HEADER,
    "x-death",
    "x-first-death-queue",
];

/// How a deferred message travels back to its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through the delay bucket of [`DEFER_DELAY`] (`chorus.delay`, back by `chorus.retry`):
    /// for the queues bound to `chorus.retry` (subtasks, control).
    DelayBucket,
    /// After waiting [`DEFER_DELAY`] here, straight to the queue by the default exchange: for
    /// `chorus.tasks`, which is not bound to `chorus.retry` on purpose (a worker, which may
    /// publish to `chorus.delay`, must not be able to submit tasks; docs/security.md).
    WaitThenDirect,
}

/// Sends a message (`body` with its `properties`: reply-to, correlation id, message id, type
/// and headers kept) back to `queue` by `route`, its deferral count one higher; the caller
/// acks the delivery once this returns (the publish is confirmed).
///
/// # Errors
/// The broker failed: the delivery is then not acked and comes again.
pub async fn defer(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    properties: &BasicProperties,
    route: Route,
) -> Result<(), ServiceError> {
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !BROKER_HEADERS.contains(&name.as_str()) && !name.as_str().starts_with("x-last-death") {
            kept.insert(name.clone(), value.clone());
        }
    }
    headers = kept;
    headers.insert(
        ShortString::from(topology::DEFERRALS_HEADER),
        AMQPValue::LongUInt(deferrals(properties).saturating_add(1)),
    );
    let properties = properties.clone().with_headers(headers);
    let (exchange, properties) = match route {
        Route::DelayBucket => (
            topology::DELAY_EXCHANGE,
            topology::delayed(properties, DEFER_DELAY),
        ),
        Route::WaitThenDirect => {
            tokio::time::sleep(DEFER_DELAY).await;
            ("", properties)
        }
    };
    publisher
        .publish(Outgoing {
            exchange,
            routing_key: queue,
            body,
            properties,
            mandatory: true,
        })
        .await?;
    Ok(())
}
