//! What the scripts that change the dependency graph (`record_results`, `revise`, both built
//! on `lua/prelude/graph.lua`) share on the Rust side: how an entry is passed to their
//! `add_entry`, and how their reply is parsed.

use redis::FromRedisValue;

use super::codec::{decode_entry, encode_entry};
use crate::{error::StoreError, protocol::PlanEntry};

/// Subtasks a script released: their plan entries, to publish.
pub type Released = Vec<PlanEntry>;

/// Where a graph reply holds the number of skipped ids, after the status and pending count.
pub(super) const SKIPPED_COUNT_AT: usize = 2;
/// Where a graph reply's skipped ids start.
pub(super) const SKIPPED_AT: usize = SKIPPED_COUNT_AT + 1;

/// Adds `entry` to `call` as `add_entry` in `lua/prelude/graph.lua` takes it (`SPAWN_WIDTH`
/// values): id, encoded entry, worker type, space-separated dependencies.
///
/// # Errors
/// The entry does not encode.
pub(super) fn add_entry(
    call: &mut redis::ScriptInvocation<'_>,
    entry: &PlanEntry,
) -> Result<(), StoreError> {
    call.arg(&entry.id)
        .arg(encode_entry(entry)?)
        .arg(&entry.worker_type)
        .arg(entry.depends_on.join(" "));
    Ok(())
}

/// A reply of the graph scripts: `{status, remaining, n, skipped × n, (id, entry) × m}`.
pub(super) struct GraphReply {
    pub(super) status: String,
    pub(super) remaining: u64,
    pub(super) skipped: Vec<String>,
    pub(super) released: Released,
}

/// Parses a graph script's `reply` for task `task`; a missing count reads as 0.
///
/// # Errors
/// The reply has no status, a value has the wrong type, the released list is not made of
/// (id, entry) pairs, or an entry does not decode ([`StoreError::Corrupt`]).
pub(super) fn parse_graph_reply(
    task: &str,
    reply: &[redis::Value],
) -> Result<GraphReply, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("script reply for {task}: {what}"));
    fn read<T: FromRedisValue>(value: &redis::Value) -> Result<T, String> {
        T::from_redis_value_ref(value).map_err(|e| e.to_string())
    }
    let status: String = reply
        .first()
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("no status".into()))?;
    let remaining: u64 = reply
        .get(1)
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .unwrap_or(0);
    let count: usize = reply
        .get(SKIPPED_COUNT_AT)
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .unwrap_or(0);
    let skipped = reply
        .iter()
        .skip(SKIPPED_AT)
        .take(count)
        .map(read::<String>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let rest: Vec<&redis::Value> = reply.iter().skip(SKIPPED_AT + count).collect();
    let mut released = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let [_, entry] = pair else {
            return Err(corrupt("odd release list".into()));
        };
        let bytes: Vec<u8> = read(entry).map_err(corrupt)?;
        released.push(decode_entry(task, &bytes)?);
    }
    Ok(GraphReply {
        status,
        remaining,
        skipped,
        released,
    })
}
