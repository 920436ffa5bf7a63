//! The copy of a task's graph kept with its outcome: the plan and results are dropped when the
//! outcome is stored, so whoever stores it (`Store::store_outcome`) first writes the first
//! [`KEPT_NODES`] subtasks with their final states, and the edges among them, as JSON under
//! `chorus:{<id>}:graph` (the task's hash tag: one Cluster slot with its other keys) with the
//! outcome's TTL, for the dashboard's page of a finished task.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use super::{build, settled_state, Settled, TaskGraph};
use crate::{
    error::StoreError,
    protocol,
    store::{decode_entry, Store, StoredResult, TaskKeys},
};

/// Most subtasks kept: the copy stays a few hundred kilobytes at most, whatever the plan's size.
pub const KEPT_NODES: usize = 1000;

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
fn key(id: &str) -> String {
    let keys = TaskKeys::new(id);
    // `chorus:{<id>}:task` → `chorus:{<id>}:graph`: the same hash tag, by construction.
    let task = keys.task();
    format!("{}graph", task.trim_end_matches("task"))
}

/// Writes the graph of task `id` (the first [`KEPT_NODES`] subtasks of its plan, with their
/// states now) to be kept `ttl`; called just before its outcome is stored, while its plan and
/// results still exist.
///
/// # Errors
/// Redis fails or holds what does not decode.
pub async fn keep(store: &Store, id: &str, ttl: Duration) -> Result<(), StoreError> {
    let mut conn = store.conn();
    let keys = TaskKeys::new(id);
    // Two round trips for the reads (the outcome waits on them): one keyed by the task's hash
    // tag, so a Cluster serves each pipeline from one node.
    let (order, total): (Vec<String>, usize) = redis::pipe()
        .cmd("LRANGE")
        .arg(keys.order())
        .arg(0)
        .arg(KEPT_NODES - 1)
        .cmd("LLEN")
        .arg(keys.order())
        .query_async(&mut conn)
        .await?;
    if order.is_empty() {
        return Ok(());
    }
    let (plan, raw): (Fields, Fields) = redis::pipe()
        .cmd("HMGET")
        .arg(keys.plan())
        .arg(&order)
        .cmd("HMGET")
        .arg(keys.results())
        .arg(&order)
        .query_async(&mut conn)
        .await?;
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
    let mut settled = Settled::new();
    for (subtask, raw) in order.iter().zip(raw) {
        if let Some(raw) = raw {
            let stored: StoredResult =
                protocol::decode(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            settled.insert(subtask.clone(), settled_state(&stored));
        }
    }
    // A subtask unsettled at the end (the task failed, was cancelled or ran out of time) never
    // ran to the end: it is kept as pending, without reading the waiting hash, which may be as
    // large as the plan.
    let unsettled: HashSet<String> = order.iter().cloned().collect();
    let graph = build(id, "finished", entries, &settled, &unsettled);
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
    let json = serde_json::to_vec(&kept).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let () = redis::cmd("SET")
        .arg(key(id))
        .arg(json)
        .arg("EX")
        .arg(ttl.as_secs().max(1))
        .query_async(&mut conn)
        .await?;
    Ok(())
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
