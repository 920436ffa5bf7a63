//! A running task's subtasks as a dependency graph — each subtask's worker type, state,
//! attempts and error, and an edge from each dependency to what waits for it — read from the
//! recorded plan and results in Redis, and written as Graphviz DOT, Mermaid or JSON with every
//! id, type and error escaped for the format (they come from kinds and may hold anything).
//!
//! The plan and results are working state, dropped when the outcome is stored (only the task
//! hash, per-type counters and outcome are kept): a finished task has no graph, and its outcome
//! (`chorus result`) says what came of each failed subtask.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    error::StoreError,
    protocol::SubtaskOutcome,
    store::{Store, TaskKeys, TaskState},
    text,
};

mod kept;
#[cfg(test)]
mod tests;

pub(crate) use kept::key as kept_key;
pub use kept::{from_lease_read, kept, prepare, Kept, KEPT_NODES};

/// Longest id, worker type or error written in a graph, in bytes (cut with a marker past it).
const MAX_LABEL_BYTES: usize = 120;

/// Where a subtask is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not released yet: waiting for its dependencies or a slot under the task's cap.
    Pending,
    /// Released to the workers and not settled: queued or running.
    Released,
    /// Settled: succeeded.
    Succeeded,
    /// Settled: failed (out of attempts, fatal, or poison).
    Failed,
    /// Settled: not run because a dependency failed.
    Skipped,
}

impl NodeState {
    /// The name used in every format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Released => "released",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Fill colour of the state in DOT and Mermaid.
    fn colour(self) -> &'static str {
        match self {
            Self::Pending => "#e0e0e0",
            Self::Released => "#90caf9",
            Self::Succeeded => "#a5d6a7",
            Self::Failed => "#ef9a9a",
            Self::Skipped => "#fff59d",
        }
    }
}

/// One subtask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    /// Subtask id.
    pub id: String,
    /// Worker type.
    pub worker_type: String,
    /// Where it is.
    pub state: NodeState,
    /// Attempts made, once settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The error of a failed subtask, or why one was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A dependency: `to` waits for `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The dependency.
    pub from: String,
    /// The subtask that depends on it.
    pub to: String,
}

/// A task's subtasks and their dependencies, in plan order.
#[derive(Clone, Debug, Serialize)]
pub struct TaskGraph {
    /// Task id.
    pub task: String,
    /// The task's state (`planning`, `planned`, `running`).
    pub state: &'static str,
    /// Subtasks in plan order (spawned and added ones last).
    pub nodes: Vec<Node>,
    /// Dependencies.
    pub edges: Vec<Edge>,
}

/// Why there is no graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Redis knows no such task.
    #[error("no task {0} (unknown, or its record expired)")]
    Unknown(String),
    /// The task has finished: its plan is no longer kept.
    #[error("task {0} has finished: its plan is not kept past the outcome (`chorus result` shows the outcome)")]
    Finished(String),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The graph of task `id`, from its plan, results, waiting and ready subtasks in Redis.
///
/// # Errors
/// [`GraphError::Unknown`], [`GraphError::Finished`], or Redis fails or holds what does not
/// decode.
pub async fn read(store: &Store, id: &str) -> Result<TaskGraph, GraphError> {
    let record = store
        .task(id)
        .await?
        .ok_or_else(|| GraphError::Unknown(text::quoted(id)))?;
    if record.state == TaskState::Finished {
        return Err(GraphError::Finished(text::quoted(id)));
    }
    let order = store.order(id).await?;
    let entries = store.entries(id, &order).await?;
    let settled: Settled = store
        .results(id)
        .await?
        .into_iter()
        .map(|(subtask, stored)| {
            let state = settled_state(&stored);
            (subtask, state)
        })
        .collect();
    let unreleased = unreleased(store, id).await?;
    Ok(build(
        id,
        record.state.as_str(),
        entries,
        &settled,
        &unreleased,
    ))
}

/// Where each subtask settled: state, attempts, error.
type Settled = HashMap<String, (NodeState, u32, Option<String>)>;

/// The settled state of a stored result.
fn settled_state(stored: &crate::store::StoredResult) -> (NodeState, u32, Option<String>) {
    let (state, error) = match &stored.outcome {
        SubtaskOutcome::Succeeded(_) => (NodeState::Succeeded, None),
        SubtaskOutcome::Failed(e) => (NodeState::Failed, Some(e.clone())),
        SubtaskOutcome::Skipped(e) => (NodeState::Skipped, Some(e.clone())),
    };
    (state, stored.attempts, error)
}

/// The graph of `entries` (plan order) given what settled and what is not released yet.
fn build(
    id: &str,
    state: &'static str,
    entries: Vec<crate::protocol::PlanEntry>,
    settled: &Settled,
    unreleased: &HashSet<String>,
) -> TaskGraph {
    let mut nodes = Vec::with_capacity(entries.len());
    let mut edges = Vec::new();
    for entry in entries {
        for dep in &entry.depends_on {
            edges.push(Edge {
                from: dep.clone(),
                to: entry.id.clone(),
            });
        }
        let node = match settled.get(&entry.id) {
            Some((state, attempts, error)) => Node {
                id: entry.id,
                worker_type: entry.worker_type,
                state: *state,
                attempts: Some(*attempts),
                error: error.clone(),
            },
            None => Node {
                state: if unreleased.contains(&entry.id) {
                    NodeState::Pending
                } else {
                    NodeState::Released
                },
                id: entry.id,
                worker_type: entry.worker_type,
                attempts: None,
                error: None,
            },
        };
        nodes.push(node);
    }
    TaskGraph {
        task: id.to_owned(),
        state,
        nodes,
        edges,
    }
}

/// Subtasks of `id` not released yet: those waiting for dependencies and those ready for a
/// slot under the cap.
async fn unreleased(store: &Store, id: &str) -> Result<HashSet<String>, StoreError> {
    let keys = TaskKeys::new(id);
    let mut conn = store.conn();
    let waiting: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.waiting())
        .query_async(&mut conn)
        .await?;
    let ready: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.ready())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    Ok(waiting.into_iter().chain(ready).collect())
}

/// `text` bounded and with control characters escaped, for a label.
fn label(value: &str) -> String {
    text::bounded(value, MAX_LABEL_BYTES)
}

/// A DOT double-quoted string of `parts` (each bounded, control characters escaped), one per
/// line: `"` and `\` escaped (DOT's only escapes in a quoted string), lines joined by DOT's
/// `\n`.
fn dot_label(parts: &[&str]) -> String {
    let lines: Vec<String> = parts
        .iter()
        .map(|part| {
            let mut line = String::new();
            for c in label(part).chars() {
                if c == '"' || c == '\\' {
                    line.push('\\');
                }
                line.push(c);
            }
            line
        })
        .collect();
    format!("\"{}\"", lines.join("\\n"))
}

/// Node names by subtask id, `n0`, `n1`, ... in plan order: a subtask id could be anything,
/// and labels are cut, so names are never made from ids.
fn node_names(graph: &TaskGraph) -> HashMap<&str, String> {
    graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), format!("n{i}")))
        .collect()
}

/// Mermaid label text inside `"..."`: characters Mermaid would read as syntax or markup become
/// its entity codes (`#quot;`, `#35;`, ...).
fn mermaid_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in label(value).chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '`' => out.push_str("#96;"),
            c => out.push(c),
        }
    }
    out
}

/// The graph in Graphviz DOT: one box per subtask (id, worker type · state, error; filled by
/// state), an arrow from each dependency to what waits for it.
pub fn to_dot(graph: &TaskGraph) -> String {
    let names = node_names(graph);
    let mut out = format!(
        "digraph {{\n  label={};\n  rankdir=LR;\n  node [shape=box, style=filled];\n",
        dot_label(&[&graph.task])
    );
    for node in &graph.nodes {
        let kind = format!("{} · {}", label(&node.worker_type), node.state.as_str());
        let mut parts = vec![node.id.as_str(), kind.as_str()];
        if let Some(error) = &node.error {
            parts.push(error);
        }
        out.push_str(&format!(
            "  {} [label={}, fillcolor=\"{}\"];\n",
            names[node.id.as_str()],
            dot_label(&parts),
            node.state.colour()
        ));
    }
    for edge in &graph.edges {
        if let (Some(from), Some(to)) = (names.get(edge.from.as_str()), names.get(edge.to.as_str()))
        {
            out.push_str(&format!("  {from} -> {to};\n"));
        }
    }
    out.push_str("}\n");
    out
}

/// The graph as a Mermaid flowchart: nodes are named `n0`, `n1`, ... (a subtask id could be
/// anything) and labelled with id, worker type and state; one class per state.
pub fn to_mermaid(graph: &TaskGraph) -> String {
    let mut out = String::from("flowchart LR\n");
    let names = node_names(graph);
    for node in &graph.nodes {
        out.push_str(&format!(
            "  {}[\"{}<br/>{} · {}\"]:::{}\n",
            names[node.id.as_str()],
            mermaid_text(&node.id),
            mermaid_text(&node.worker_type),
            node.state.as_str(),
            node.state.as_str()
        ));
    }
    for edge in &graph.edges {
        if let (Some(from), Some(to)) = (names.get(edge.from.as_str()), names.get(edge.to.as_str()))
        {
            out.push_str(&format!("  {from} --> {to}\n"));
        }
    }
    for state in [
        NodeState::Pending,
        NodeState::Released,
        NodeState::Succeeded,
        NodeState::Failed,
        NodeState::Skipped,
    ] {
        out.push_str(&format!(
            "  classDef {} fill:{}\n",
            state.as_str(),
            state.colour()
        ));
    }
    out
}
