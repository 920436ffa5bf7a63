//! The copy of a task's graph kept with its outcome: the plan and results are dropped when the
//! outcome is stored, so whoever stores it (`Store::store_outcome`) first reads the first
//! [`KEPT_NODES`] subtasks with their final states, and the edges among them, then writes them
//! in the outcome's own script, as JSON under
//! `chorus:{<id>}:graph` (the task's hash tag: one Cluster slot with its other keys) with the
//! outcome's TTL, for the dashboard's page of a finished task.

use std::{collections::HashSet, sync::LazyLock};

use redis::Script;

use serde::{Deserialize, Serialize};

use super::{build, settled_state, Settled, TaskGraph};
use crate::{
    error::StoreError,
    protocol,
    store::{decode_entry, Settled as LeaseRead, Store, StoredResult, TaskKeys},
};

/// Most subtasks kept: the copy stays a few hundred kilobytes at most, whatever the plan's size.
pub const KEPT_NODES: usize = 1000;

static READ: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("kept_read.lua")));

/// What is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kept {
    /// Subtasks in the plan (the graph holds the first [`KEPT_NODES`] of them).
    pub total: usize,
    /// Subtasks, in plan order.
    pub nodes: Vec<super::Node>,
    /// Dependencies among them.
    pub edges: Vec<super::Edge>,
}

/// The values of an `HMGET`, in the order asked (`None` where a field is missing).
type Fields = Vec<Option<Vec<u8>>>;

/// The key of the kept graph of `id`.
pub(crate) fn key(id: &str) -> String {
    let keys = TaskKeys::new(id);
    // `chorus:{<id>}:task` → `chorus:{<id>}:graph`: the same hash tag, by construction.
    let task = keys.task();
    format!("{}graph", task.trim_end_matches("task"))
}

/// Reads the graph of task `id` (the first [`KEPT_NODES`] subtasks of its plan, with their
/// states now) in one round trip (`kept_read.lua`) and returns it as the JSON to keep, or `None`
/// when the task has no plan; called just before its outcome is stored, while its plan and
/// results still exist, unless [`from_lease_read`] could build it from what synthesis read.
/// `Store::store_outcome` writes it in the outcome's own script, with the outcome's TTL.
///
/// # Errors
/// Redis fails or holds what does not decode.
pub async fn prepare(store: &Store, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let keys = TaskKeys::new(id);
    let mut call = READ.prepare_invoke();
    call.key(keys.order())
        .key(keys.plan())
        .key(keys.results())
        .arg(KEPT_NODES);
    let (total, order, plan, raw): (usize, Vec<String>, Fields, Fields) =
        call.invoke_async(&mut store.conn()).await?;
    let mut settled = Settled::new();
    for (subtask, raw) in order.iter().zip(raw) {
        if let Some(raw) = raw {
            let stored: StoredResult =
                protocol::decode(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            settled.insert(subtask.clone(), settled_state(&stored));
        }
    }
    to_json(id, total, &order, plan, &settled)
}

/// The JSON to keep for task `id` built from what the results that settled it read with the
/// synthesis lease (`read`), with no round trip of its own; `None` when the plan entries were
/// not read with them, or the task has no plan.
///
/// # Errors
/// A plan entry is missing or does not decode.
pub fn from_lease_read(id: &str, read: &LeaseRead) -> Result<Option<Vec<u8>>, StoreError> {
    if read.plan.is_empty() {
        return Ok(None);
    }
    let settled: Settled = read
        .results
        .iter()
        .map(|(subtask, stored)| (subtask.clone(), settled_state(stored)))
        .collect();
    let drawn = read.order.len().min(read.plan.len()).min(KEPT_NODES);
    to_json(
        id,
        read.order.len(),
        &read.order[..drawn],
        read.plan[..drawn].to_vec(),
        &settled,
    )
}

/// The JSON kept for task `id`: `total` subtasks in its plan, of which `order` (the first, in
/// plan order) are drawn, with their encoded plan entries (`plan`, in the same order) and the
/// states of those `settled`; `None` for an empty order.
fn to_json(
    id: &str,
    total: usize,
    order: &[String],
    plan: Fields,
    settled: &Settled,
) -> Result<Option<Vec<u8>>, StoreError> {
    if order.is_empty() {
        return Ok(None);
    }
    let entries = order
        .iter()
        .zip(plan)
        .map(|(subtask, bytes)| match bytes {
            Some(bytes) => decode_entry(id, &bytes),
            None => Err(StoreError::Corrupt(format!(
                "task {id} has no plan entry {subtask}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A subtask unsettled at the end (the task failed, was cancelled or ran out of time) never
    // ran to the end: it is kept as pending, without reading the waiting hash, which may be as
    // large as the plan.
    let unsettled: HashSet<String> = order.iter().cloned().collect();
    let graph = build(id, "finished", entries, settled, &unsettled);
    let drawn: HashSet<&String> = order.iter().collect();
    let kept = Kept {
        total,
        nodes: graph.nodes,
        edges: graph
            .edges
            .into_iter()
            .filter(|e| drawn.contains(&e.from))
            .collect(),
    };
    serde_json::to_vec(&kept)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The graph kept for finished task `id` and the size of its plan, if one was kept.
///
/// # Errors
/// Redis fails or holds what does not decode.
pub async fn kept(store: &Store, id: &str) -> Result<Option<(TaskGraph, usize)>, StoreError> {
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key(id))
        .query_async(&mut store.conn())
        .await?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let kept: Kept =
        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Some((
        TaskGraph {
            task: id.to_owned(),
            state: "finished",
            nodes: kept.nodes,
            edges: kept.edges,
        },
        kept.total,
    )))
}
