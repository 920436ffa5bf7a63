//! The sweeper: finds tasks that have made no progress for a while although subtasks are
//! pending (a subtask's message lost, or dead-lettered by the broker at its delivery limit), and
//! reports them (docs/reliability.md, "Stuck tasks").
//!
//! Synthesizers run it, one at a time across all of them: each sweep first takes the lease
//! [`SWEEP_LEASE_KEY`] (`SET NX PX` for one interval, never released), so however many
//! synthesizers run, the deployment sweeps once per `--sweep-interval-ms`. It reads the live
//! tasks from the index of recent tasks (`chorus:index:{tasks}`, [`crate::admin::tasks`]) and
//! notes each one's progress in its own hash (`mark.lua`, one Redis Cluster slot per task), so
//! nothing is added to the path of results. A task found stuck is then repaired
//! ([`repair`]): what the broker dead-lettered is settled as failed, what is in no queue is
//! published again.

use std::{sync::LazyLock, time::Duration};

use clap::Args;
use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::tasks::{Entry, ENTRIES_KEY, INDEX_KEY, LIVE},
    clock::now_ms,
    error::StoreError,
    observe::metrics,
    store::{Store, TaskKeys},
    text,
};

pub mod repair;

pub use repair::{RepairSettings, Repaired};

#[cfg(test)]
mod tests;

/// The sweeper's lease, held by the synthesizer sweeping (its hash tag is a slot of its own).
pub const SWEEP_LEASE_KEY: &str = "chorus:{sweep}:lease";
/// Index entries read per round trip.
const PAGE: isize = 200;

static MARK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("sweep/mark.lua")));

/// The sweeper's flags (synthesizer).
#[derive(Args, Clone, Debug)]
pub struct SweepArgs {
    /// How often the deployment looks for stuck tasks and repairs them, in ms (one synthesizer
    /// at a time, through a lease in Redis); 0 turns the sweeper off in this synthesizer.
    #[arg(long, env = "CHORUS_SWEEP_INTERVAL_MS", default_value_t = 30_000)]
    pub sweep_interval_ms: u64,

    /// A running task with pending subtasks is stuck once its progress (subtasks settled,
    /// published or retried, its state or round) has not changed for this long, in ms; it is
    /// then repaired (docs/reliability.md, "Stuck tasks"). Keep it well above the longest a
    /// subtask may take, backlog included: a subtask running longer is published again.
    #[arg(long, env = "CHORUS_STUCK_AFTER_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub stuck_after_ms: u64,
}

/// A task found stuck by a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    /// Task id.
    pub id: String,
    /// Subtasks not settled.
    pub pending: u64,
    /// How long no progress was seen, in ms (measured from the first sweep that saw the
    /// task's current progress, so at most one interval less than the truth).
    pub stalled_ms: u64,
}

/// What one task's progress looks like to a sweep.
struct Seen {
    state: String,
    pending: u64,
    stalled_ms: u64,
}

impl Store {
    /// Takes the sweeper's lease for `ttl` if no synthesizer holds it: `true` when this one
    /// sweeps now.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn take_sweep_lease(&self, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(SWEEP_LEASE_KEY)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.conn())
            .await?;
        Ok(taken.is_some())
    }

    /// The ids of the tasks the index of recent tasks holds as live (no outcome yet).
    ///
    /// # Errors
    /// Redis failed.
    pub async fn live_task_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut live = Vec::new();
        let mut start: isize = 0;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(INDEX_KEY)
                .arg(start)
                .arg(start + PAGE - 1)
                .query_async(&mut self.conn())
                .await?;
            if ids.is_empty() {
                return Ok(live);
            }
            start += PAGE;
            let raw: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(ENTRIES_KEY)
                .arg(&ids)
                .query_async(&mut self.conn())
                .await?;
            for (id, raw) in ids.into_iter().zip(raw) {
                let entry: Option<Entry> = raw.and_then(|text| serde_json::from_str(&text).ok());
                if entry.is_some_and(|entry| entry.status == LIVE) {
                    live.push(id);
                }
            }
        }
    }

    /// Notes task `id`'s progress as a sweep sees it `now_ms` and says how long it has not
    /// changed.
    async fn mark_progress(&self, id: &str, now_ms: u64) -> Result<Seen, StoreError> {
        let keys = TaskKeys::new(id);
        let (state, pending, stalled_ms): (String, u64, u64) = MARK
            .key(keys.task())
            .key(keys.pending())
            .arg(now_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(Seen {
            state,
            pending,
            stalled_ms,
        })
    }
}

/// Whether a task seen as `seen` by a sweep is stuck: running, with subtasks pending, and no
/// progress for at least `stuck_after_ms`.
fn is_stuck(state: &str, pending: u64, stalled_ms: u64, stuck_after_ms: u64) -> bool {
    state == "running" && pending > 0 && stalled_ms >= stuck_after_ms
}

/// One sweep: notes the progress of every live task and returns those stuck for at least
/// `stuck_after`, each also logged at warn level.
///
/// # Errors
/// Redis failed (the tasks swept before the failure are noted).
pub async fn sweep_once(store: &Store, stuck_after: Duration) -> Result<Vec<Stuck>, StoreError> {
    let stuck_after_ms = u64::try_from(stuck_after.as_millis()).unwrap_or(u64::MAX);
    let now = now_ms();
    let mut stuck = Vec::new();
    for id in store.live_task_ids().await? {
        let seen = store.mark_progress(&id, now).await?;
        if is_stuck(&seen.state, seen.pending, seen.stalled_ms, stuck_after_ms) {
            tracing::warn!(
                task = %text::quoted(&id),
                pending = seen.pending,
                stalled_ms = seen.stalled_ms,
                "task stuck: no progress while subtasks are pending (a subtask's message lost or dead-lettered at the broker's delivery limit?); see docs/reliability.md, \"Stuck tasks\""
            );
            stuck.push(Stuck {
                id,
                pending: seen.pending,
                stalled_ms: seen.stalled_ms,
            });
        }
    }
    Ok(stuck)
}

/// One sweep and the repair of what it found stuck; returns how many tasks were stuck.
async fn sweep_and_repair(
    store: &Store,
    repair: &RepairSettings,
    stuck_after: Duration,
) -> Result<usize, String> {
    let stuck = sweep_once(store, stuck_after)
        .await
        .map_err(|e| e.to_string())?;
    metrics::stuck_tasks_reported(stuck.len());
    if !stuck.is_empty() {
        let repaired = repair::repair(store, repair, &stuck)
            .await
            .map_err(|e| format!("repair: {e}"))?;
        tracing::debug!(?repaired, "stuck tasks repaired");
    }
    Ok(stuck.len())
}

/// Runs the sweeper of one synthesizer (`owner`: its instance id) until `shutdown`: every
/// interval, a sweep and a repair of the stuck tasks found, if this synthesizer takes the
/// lease. Does nothing with an interval of 0.
pub async fn run(
    store: Store,
    args: SweepArgs,
    repair: RepairSettings,
    owner: String,
    shutdown: CancellationToken,
) {
    if args.sweep_interval_ms == 0 {
        return;
    }
    let interval = Duration::from_millis(args.sweep_interval_ms);
    let stuck_after = Duration::from_millis(args.stuck_after_ms);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        // Held for one interval and never released: one sweep per interval in the deployment.
        let swept = match store.take_sweep_lease(&owner, interval).await {
            Ok(true) => sweep_and_repair(&store, &repair, stuck_after).await,
            Ok(false) => continue,
            Err(error) => Err(error.to_string()),
        };
        match swept {
            Ok(stuck) => tracing::debug!(stuck, "sweep done"),
            Err(error) => tracing::warn!(%error, "sweep failed; the next interval tries again"),
        }
    }
}
