//! What a task hash holds: its lifecycle state and the fields `chorus status` and synthesis
//! read, and how they are parsed from the hash.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    error::StoreError,
    protocol::{self, ResolvedOptions, SubtaskOutcome},
    usage::TokenStats,
};

/// Lifecycle of a task in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Claimed; the plan is not (completely) recorded yet.
    Planning,
    /// Plan and pending set recorded; subtasks are being published.
    Planned,
    /// Every subtask has been published and confirmed.
    Running,
    /// The outcome is stored.
    Finished,
}

impl TaskState {
    /// The state stored as `raw` in the task hash's `state` field.
    ///
    /// # Errors
    /// `raw` is not a state Chorus writes ([`StoreError::Corrupt`]).
    pub(super) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "planning" => Ok(Self::Planning),
            "planned" => Ok(Self::Planned),
            "running" => Ok(Self::Running),
            "finished" => Ok(Self::Finished),
            other => Err(StoreError::Corrupt(format!("unknown task state {other:?}"))),
        }
    }

    /// Name as stored and shown by `chorus status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planning => "planning",
            Self::Planned => "planned",
            Self::Running => "running",
            Self::Finished => "finished",
        }
    }
}

/// Everything stored about a task, for `chorus status` and for synthesis.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    /// Lifecycle state.
    pub state: TaskState,
    /// Kind name.
    pub kind: String,
    /// Encoded [`crate::protocol::ResolvedOptions`].
    pub options: Vec<u8>,
    /// Encoded task input.
    pub input: Vec<u8>,
    /// Subtasks in the plan (0 until planned).
    pub total: u64,
    /// Subtasks published and confirmed so far.
    pub published: u64,
    /// Settled as succeeded.
    pub succeeded: u64,
    /// Settled as failed.
    pub failed: u64,
    /// Retries summed over settled subtasks.
    pub retries: u64,
    /// Results that arrived again for an already settled subtask (duplicate executions or
    /// redeliveries), counted while the task record exists.
    pub duplicates: u64,
    /// When the orchestrator claimed the task, ms since the Unix epoch.
    pub created_ms: u64,
    /// Whether the outcome has been published to every waiter.
    pub delivered: bool,
    /// Settled as skipped.
    pub skipped: u64,
    /// Current review round, 1 for the first.
    pub round: u32,
    /// Whether the first wave is the whole plan order (no dependencies, no cap).
    pub wave_is_order: bool,
    /// Subtasks in the first wave.
    pub wave_len: u64,
    /// The parent subtask of a child task, encoded [`crate::protocol::ParentRef`].
    pub parent: Option<Vec<u8>>,
    /// Tokens per model recorded so far (`usage:<model>:<counter>` fields).
    pub tokens: BTreeMap<String, TokenStats>,
    /// Prompt plus completion tokens recorded so far, what `max_tokens` is checked against.
    pub tokens_used: u64,
    /// Sum of the recorded usages' costs, when one had a cost.
    pub cost: Option<f64>,
    /// Fingerprint of the kind's definition the task was claimed with (field `fingerprint`;
    /// `None` for a task claimed by an orchestrator lacking the kind, or by an earlier version).
    pub fingerprint: Option<String>,
}

impl TaskRecord {
    /// The task's resolved options, decoded from [`TaskRecord::options`]; `id` (the task's id)
    /// only names the task in the error.
    ///
    /// # Errors
    /// They do not decode (the record was written by something else): [`StoreError::Corrupt`].
    pub fn resolved_options(&self, id: &str) -> Result<ResolvedOptions, StoreError> {
        protocol::decode(&self.options)
            .map_err(|e| StoreError::Corrupt(format!("options of task {id}: {e}")))
    }
}

/// A settled subtask as stored in the `results` hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Attempts used.
    pub attempts: u32,
    /// Output or error.
    pub outcome: SubtaskOutcome,
}

/// The task record in the fields of task `id`'s hash (field name → raw value); `None` for no
/// fields (an unknown or expired task). Counters not written yet (`duplicates` and `wave_len`
/// come after the claim) read as 0, a missing `round` as 1.
///
/// # Errors
/// The hash has no `state`, or one Chorus does not write ([`StoreError::Corrupt`]).
pub(super) fn task_record(
    id: &str,
    fields: &HashMap<String, Vec<u8>>,
) -> Result<Option<TaskRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |name: &str| -> u64 { text(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let state =
        text("state").ok_or_else(|| StoreError::Corrupt(format!("task {id} has no state")))?;
    Ok(Some(TaskRecord {
        state: TaskState::parse(&state)?,
        kind: text("kind").unwrap_or_default(),
        options: fields.get("options").cloned().unwrap_or_default(),
        input: fields.get("input").cloned().unwrap_or_default(),
        total: number("total"),
        published: number("published"),
        succeeded: number("succeeded"),
        failed: number("failed"),
        retries: number("retries"),
        duplicates: number("duplicates"),
        created_ms: number("created_ms"),
        delivered: number("delivered") == 1,
        skipped: number("skipped"),
        round: u32::try_from(number("round")).unwrap_or(1).max(1),
        wave_is_order: text("wave_is_order").as_deref() != Some("0"),
        wave_len: number("wave_len"),
        parent: fields.get("parent").cloned(),
        tokens: tokens_of(fields),
        tokens_used: number("tokens"),
        cost: text("cost").and_then(|v| v.parse().ok()),
        fingerprint: text("fingerprint").filter(|f| !f.is_empty()),
    }))
}

/// Prefix of the task hash's per-model usage counters: `usage:<model>:<counter>`.
pub(super) const USAGE_PREFIX: &str = "usage:";

/// The per-model counters of a task hash's `usage:<model>:<counter>` fields (`prompt`,
/// `completion`, `cached`, `calls`, `cache_hits`); others are ignored.
fn tokens_of(fields: &HashMap<String, Vec<u8>>) -> BTreeMap<String, TokenStats> {
    let mut tokens: BTreeMap<String, TokenStats> = BTreeMap::new();
    for (field, value) in fields {
        let Some((model, counter)) = field
            .strip_prefix(USAGE_PREFIX)
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            continue;
        };
        let value: u64 = String::from_utf8_lossy(value).parse().unwrap_or(0);
        let stats = tokens.entry(model.to_owned()).or_default();
        match counter {
            "prompt" => stats.prompt = value,
            "completion" => stats.completion = value,
            "cached" => stats.cached = value,
            "calls" => stats.calls = value,
            "cache_hits" => stats.cache_hits = value,
            _ => {}
        }
    }
    tokens
}
