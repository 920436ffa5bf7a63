//! Recording subtask results: each once, with the subtasks they spawned, releasing what that
//! unblocks — and, for the results that settle the task, acquiring its synthesis lease in the same
//! call.

use std::sync::LazyLock;

use redis::{FromRedisValue, Script};
use serde::Serialize;

use super::{
    graph::{add_entry, parse_graph_reply, Released, SKIPPED_AT, SKIPPED_COUNT_AT},
    keys::GRAPH,
    lease::{lease_ttl_ms, new_lease_token},
    run::{LeaseRequest, SettledLease},
    Store, TaskKeys,
};
use crate::{
    error::StoreError,
    protocol::{self, ResultMessage, SubtaskOutcome},
    usage::Usage,
};

static RECORD_RESULTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/graph.lua"),
        include_str!("lua/prelude/lease_run.lua"),
        include_str!("lua/record_results.lua")
    ))
});

/// What recording a result did.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    /// The results were looked at one by one.
    Batch {
        /// What happened to each result, in order.
        statuses: Vec<ResultStatus>,
        /// Unsettled subtasks left.
        remaining: u64,
        /// Subtasks these results released (dependencies met, or slots freed under the cap).
        released: Released,
        /// Subtasks settled as skipped because one of these failed.
        skipped: Vec<String>,
    },
    /// The task is already finished; nothing changed.
    TaskFinished,
    /// No such task in Redis.
    UnknownTask,
}

/// What recording did with one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultStatus {
    /// First time for this subtask: recorded.
    New,
    /// Already recorded before; nothing changed.
    Duplicate,
    /// The result spawned more subtasks than the task may have in all; nothing was recorded.
    TooManySubtasks {
        /// Subtasks the task would have had.
        would_have: u64,
    },
    /// A spawned subtask reuses an existing id or depends on an unknown one; nothing was
    /// recorded.
    SpawnConflict {
        /// What is wrong.
        reason: String,
    },
    /// The task has no such subtask.
    UnknownSubtask,
}

impl ResultStatus {
    /// A status as the script writes it: `new`, `duplicate`, `unknown-subtask`,
    /// `limit:<would have>` or `conflict:<reason>`; anything else reads as an unknown subtask.
    pub(super) fn parse(raw: &str) -> Self {
        match raw.split_once(':') {
            Some(("limit", n)) => Self::TooManySubtasks {
                would_have: n.parse().unwrap_or(u64::MAX),
            },
            Some(("conflict", reason)) => Self::SpawnConflict {
                reason: reason.to_owned(),
            },
            _ => match raw {
                "new" => Self::New,
                "duplicate" => Self::Duplicate,
                _ => Self::UnknownSubtask,
            },
        }
    }
}

/// Adds one result to `call` as `record_results.lua` reads it (`RESULT_WIDTH` values, then its
/// spawned entries).
fn add_result(
    call: &mut redis::ScriptInvocation<'_>,
    result: &ResultMessage,
) -> Result<(), StoreError> {
    // Encodes like a `StoredResult`, without copying the output.
    #[derive(Serialize)]
    struct StoredResultRef<'a> {
        attempts: u32,
        outcome: &'a SubtaskOutcome,
    }
    let record = protocol::encode(&StoredResultRef {
        attempts: result.attempts,
        outcome: &result.outcome,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let succeeded = matches!(result.outcome, SubtaskOutcome::Succeeded(_));
    call.arg(&result.subtask)
        .arg(record)
        .arg(if succeeded { "1" } else { "0" })
        .arg(result.attempts.saturating_sub(1))
        .arg(result.round)
        .arg(result.spawned.len())
        .arg(result.usage.len());
    for entry in &result.spawned {
        add_entry(call, entry)?;
    }
    usage_entries(call, &result.usage);
    Ok(())
}

/// `usage` as the scripts read usage entries (7 values each: model, prompt, completion, cached
/// tokens, calls, cache hits, cost or '').
fn usage_entries(call: &mut redis::ScriptInvocation<'_>, usage: &[Usage]) {
    for entry in usage {
        call.arg(&entry.model)
            .arg(entry.prompt_tokens)
            .arg(entry.completion_tokens)
            .arg(entry.cached_tokens)
            .arg(entry.calls)
            .arg(entry.cache_hits)
            .arg(entry.cost.map(|cost| cost.to_string()).unwrap_or_default());
    }
}

/// A step's `usage` as `prelude/usage.lua`'s `count_usage` reads it: the count, then the
/// entries (what a plan, review or synthesis used, counted with what it wrote).
pub(super) fn add_usage_block(call: &mut redis::ScriptInvocation<'_>, usage: &[Usage]) {
    call.arg(usage.len());
    usage_entries(call, usage);
}

/// Parses the part of a `record_results.lua` reply that says what was recorded, for `expected`
/// results of task `task`: `{'batch', pending, #skipped, skipped..., #results, statuses...,
/// released...}` — the graph reply's layout with the statuses spliced in after the skipped
/// ids — or `{'unknown-task', ..}` or `{'finished', ..}`.
///
/// # Errors
/// The reply has another shape, or not one status per result ([`StoreError::Corrupt`]).
pub(super) fn read_recorded(
    task: &str,
    expected: usize,
    reply: &[redis::Value],
) -> Result<Recorded, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("script reply for {task}: {what}"));
    let status: String = reply
        .first()
        .map(String::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .ok_or_else(|| corrupt("no status"))?;
    match status.as_str() {
        "unknown-task" => return Ok(Recorded::UnknownTask),
        "finished" => return Ok(Recorded::TaskFinished),
        _ => {}
    }
    let skipped_count = reply
        .get(SKIPPED_COUNT_AT)
        .map(usize::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .unwrap_or(0);
    let statuses_at = SKIPPED_AT + skipped_count;
    let status_count = reply
        .get(statuses_at)
        .map(usize::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .unwrap_or(0);
    if status_count != expected {
        return Err(corrupt("one status per result expected"));
    }
    let statuses = reply
        .get(statuses_at + 1..statuses_at + 1 + status_count)
        .ok_or_else(|| corrupt("statuses missing"))?
        .iter()
        .map(|value| {
            let raw = String::from_redis_value_ref(value).map_err(|e| corrupt(&e.to_string()))?;
            Ok(ResultStatus::parse(&raw))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut graph_reply: Vec<redis::Value> = reply[..statuses_at].to_vec();
    graph_reply.extend_from_slice(&reply[statuses_at + 1 + status_count..]);
    let parsed = parse_graph_reply(task, &graph_reply)?;
    Ok(Recorded::Batch {
        statuses,
        remaining: parsed.remaining,
        released: parsed.released,
        skipped: parsed.skipped,
    })
}

impl Store {
    /// Records settled subtasks of one task, each once — with the subtasks they spawned — in
    /// one atomic call, and releases what that unblocks: dependents whose dependencies all
    /// succeeded (or skips them after a failure) and, under a cap, the next ready subtasks.
    /// Duplicates change nothing. With `settle_lease`, results that leave nothing pending acquire
    /// that lease in the same call (see [`Store::lease_run`]). A task has at most
    /// `max_subtasks` subtasks, spawned ones included.
    ///
    /// # Errors
    /// Redis fails, or something does not encode or decode.
    pub async fn record_results(
        &self,
        task: &str,
        results: &[&ResultMessage],
        max_subtasks: u64,
        settle_lease: Option<&LeaseRequest<'_>>,
    ) -> Result<(Recorded, Option<SettledLease>), StoreError> {
        let keys = TaskKeys::new(task);
        let token = settle_lease.map(|_| new_lease_token());
        let mut call = RECORD_RESULTS.prepare_invoke();
        call.key(keys.all(&GRAPH))
            .key(settle_lease.map_or_else(|| keys.synth_lease(), |lease| lease.key.to_owned()))
            .key(keys.starts())
            .arg(max_subtasks)
            .arg(results.len())
            .arg(token.as_deref().unwrap_or(""))
            .arg(settle_lease.map_or(0, |lease| lease_ttl_ms(lease.ttl)))
            .arg(settle_lease.map_or("", |lease| lease.run))
            .arg(settle_lease.map_or(0, |lease| lease.results_up_to));
        for result in results {
            add_result(&mut call, result)?;
        }
        let reply: Vec<redis::Value> = call.invoke_async(&mut self.conn()).await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("script reply for {task}: {what}"));
        let lease = match (settle_lease.zip(token), reply.get(1)) {
            (Some((request, token)), Some(redis::Value::Array(leased))) => Some(
                SettledLease::Acquired(Box::new(self.leased(task, request, token, leased).await?)),
            ),
            (Some(_), Some(redis::Value::Nil) | None) | (None, _) => None,
            (Some(_), Some(_)) => Some(SettledLease::Held),
        };
        let recorded = match reply.first() {
            Some(redis::Value::Array(recorded)) => read_recorded(task, results.len(), recorded),
            _ => Err(corrupt("no recorded part")),
        };
        match (recorded, lease) {
            (Ok(recorded), lease) => Ok((recorded, lease)),
            (Err(error), Some(SettledLease::Acquired(leased))) => {
                if let Some(request) = settle_lease {
                    leased.release_unstarted(task, request.run).await;
                }
                Err(error)
            }
            (Err(error), _) => Err(error),
        }
    }
}
