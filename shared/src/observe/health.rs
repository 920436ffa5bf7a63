//! Readiness (`/readyz`): connected to RabbitMQ with every consumer up, and Redis answering.
//! The consume loop reports its consumers ([`consumer_up`]); Redis is asked at each probe, since
//! the store's connection only notices an outage at its next command.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex, OnceLock,
    },
    time::Duration,
};

use crate::store::Store;

/// Consumers the service runs (set by `consume::serve`), and how many are consuming now.
static EXPECTED: AtomicUsize = AtomicUsize::new(0);
static CONSUMING: AtomicUsize = AtomicUsize::new(0);
/// Whether a session has been lost since start-up: "reconnecting" rather than "connecting".
static LOST_ONCE: AtomicBool = AtomicBool::new(false);
/// The service's Redis, once connected.
static STORE: OnceLock<Mutex<Option<Store>>> = OnceLock::new();

/// Longest wait for Redis's answer to a probe's `PING`: a probe must answer quicker than the
/// supervisor's timeout (Kubernetes' default is 1 s).
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Counts `consumers` more consumers the service must have up to be ready.
pub fn expect_consumers(consumers: usize) {
    EXPECTED.fetch_add(consumers, Ordering::Relaxed);
}

/// A consumer is up; it is counted down when the returned guard drops (its session ended).
#[must_use = "the consumer counts as up while the guard lives"]
pub fn consumer_up() -> ConsumerUp {
    CONSUMING.fetch_add(1, Ordering::Relaxed);
    ConsumerUp
}

/// Counts a consumer up while it lives (see [`consumer_up`]).
#[derive(Debug)]
pub struct ConsumerUp;

impl Drop for ConsumerUp {
    fn drop(&mut self) {
        CONSUMING.fetch_sub(1, Ordering::Relaxed);
        LOST_ONCE.store(true, Ordering::Relaxed);
    }
}

/// The service's Redis, which each probe pings.
pub fn attach_store(store: &Store) {
    let slot = STORE.get_or_init(|| Mutex::new(None));
    let mut slot = match slot.lock() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    *slot = Some(store.clone());
}

/// Whether the service is ready.
///
/// # Errors
/// Why not, one line naming the server: `rabbitmq: connecting`, `rabbitmq: reconnecting`,
/// `redis: not connected yet`, `redis: <error>`.
pub async fn check() -> Result<(), String> {
    let store = STORE.get().and_then(|slot| match slot.lock() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    });
    let Some(store) = store else {
        return Err("redis: not connected yet".to_owned());
    };
    let expected = EXPECTED.load(Ordering::Relaxed);
    let consuming = CONSUMING.load(Ordering::Relaxed);
    if expected == 0 || consuming < expected {
        let state = if LOST_ONCE.load(Ordering::Relaxed) {
            "reconnecting"
        } else {
            "connecting"
        };
        return Err(format!(
            "rabbitmq: {state} ({consuming} of {expected} consumers up)"
        ));
    }
    match tokio::time::timeout(REDIS_PROBE_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("redis: {error}")),
        Err(_) => Err(format!(
            "redis: no answer within {} ms",
            REDIS_PROBE_TIMEOUT.as_millis()
        )),
    }
}
