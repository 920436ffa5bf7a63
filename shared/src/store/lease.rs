//! Leases: a key holding an owner token, taken with `SET NX PX` by the script that acquires it,
//! renewed in the background while held, and released by its holder or left to lapse.
//!
//! A lease is acquired inside the script that needs it (claim, `lease_run`, `record_results`),
//! so the acquiring call costs no extra round trip; [`Store::hold_lease`] then makes the guard.
//! It is released by [`Lease::release`], by the script of the last write made under it
//! (`mark_running`, `mark_delivered`), or lapses after its ttl when its holder crashed.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::LazyLock,
    time::Duration,
};

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::error::StoreError;

static RELEASE_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/release_lease.lua")));
static RENEW_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/renew_lease.lua")));

/// Renewals per ttl: renewing every third of it leaves two renewals' slack before a live
/// holder's lease could lapse.
const RENEWALS_PER_TTL: u64 = 3;

/// A held lease; [`Lease::release`] releases it, dropping it lets it lapse.
pub struct Lease {
    pub(super) store: Store,
    /// The lease's key.
    pub(super) key: String,
    /// Owner token, checked by the scripts that write under the lease.
    pub(super) token: String,
    /// Stops the renewals.
    stop: CancellationToken,
    /// Released already, by the script of the last write made under it.
    released: AtomicBool,
}

impl Lease {
    /// Releases the lease if it is still ours.
    ///
    /// # Errors
    /// Redis fails; the lease then lapses by itself.
    pub async fn release(self) -> Result<(), StoreError> {
        self.stop.cancel();
        if self.released.load(Ordering::Relaxed) {
            return Ok(());
        }
        RELEASE_LEASE
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut self.store.conn())
            .await?;
        Ok(())
    }

    /// [`Lease::release`] for a caller with nothing to do about a failure: it is logged (at
    /// debug level, with `task`), and the lease lapses by itself.
    pub async fn release_or_log(self, task: &str) {
        let key = self.key.clone();
        if let Err(error) = self.release().await {
            tracing::debug!(task, lease = %key, %error, "cannot release lease; it lapses by itself");
        }
    }

    /// Stops the renewals before a script releases the lease as part of its last write.
    pub(super) fn stop_renewing(&self) {
        self.stop.cancel();
    }

    /// Notes that a script released the lease, so [`Lease::release`] has nothing left to do.
    pub(super) fn mark_released(&self) {
        self.released.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Store {
    /// The guard of a lease a script just acquired at `key` with `token` for `ttl_ms`: renews
    /// it in the background until released or dropped; a crashed holder's lease lapses after
    /// its ttl.
    pub(super) fn hold_lease(&self, key: &str, token: String, ttl_ms: u64) -> Lease {
        let stop = CancellationToken::new();
        let renewal = {
            let store = self.clone();
            let key = key.to_owned();
            let token = token.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis((ttl_ms / RENEWALS_PER_TTL).max(1));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let renewed: Result<i64, _> = RENEW_LEASE
                        .key(&key)
                        .arg(&token)
                        .arg(ttl_ms)
                        .invoke_async(&mut store.conn())
                        .await;
                    if let Err(error) = renewed {
                        tracing::warn!(lease = %key, %error, "cannot renew lease");
                    }
                }
            })
        };
        drop(renewal);
        Lease {
            store: self.clone(),
            key: key.to_owned(),
            token,
            stop,
            released: AtomicBool::new(false),
        }
    }
}

/// A lease owner token unique across processes: a random process id and a counter. Every
/// result message asks for one (its script may settle the task), so it must not cost a call
/// into the kernel's random number generator each time.
pub(super) fn new_lease_token() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `ttl` in whole ms as the scripts take it, at least 1 (`PX 0` is an error in Redis).
pub(super) fn lease_ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
