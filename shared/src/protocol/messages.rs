//! The messages between the services: subtasks on `chorus.subtasks[.<type>]` (one, or a batch
//! of first attempts), results on `chorus.results` (one, or a batch), and `subtask.<status>`
//! events on `chorus.events`. Always MessagePack maps with named fields (docs/protocol.md).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{
    default_worker_type, validate_subtask_id, validate_task_id, validate_worker_type, PlanEntry,
    ProtocolError, Usage, MAX_ATTEMPTS_LIMIT, TIMEOUT_MS_LIMIT,
};

/// One subtask on `chorus.subtasks` (and in the delay queues between attempts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskMessage {
    /// Task id.
    pub task: String,
    /// Subtask id, unique within the task.
    pub subtask: String,
    /// Kind name, so the worker finds the handler without asking Redis.
    pub kind: String,
    /// 1 for the first run.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Time limit of this attempt.
    pub timeout_ms: u64,
    /// The kind's subtask, MessagePack-encoded by the kind.
    pub payload: ByteBuf,
    /// Worker type whose queue carries it.
    #[serde(default = "default_worker_type")]
    pub worker_type: String,
    /// Subtasks whose outputs the handler receives as context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Spawn depth (0 for planned subtasks).
    #[serde(default)]
    pub depth: u32,
    /// When the task's deadline passes, ms since the Unix epoch: no attempt starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// Whether to publish `subtask.<status>` events.
    #[serde(default)]
    pub events: bool,
    /// The task's review round this subtask was published in, 1 for the first; its result
    /// carries it back, so a result of an earlier round never counts in a later one. 0 (absent)
    /// is a message from a version before rounds were carried: accepted in any round.
    #[serde(default)]
    pub round: u32,
    /// Usage of this subtask's earlier, failed attempts: carried to the next attempt so that
    /// the result counts every attempt paid for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<Usage>,
    /// The task's token budget (`options.max_tokens`), checked before the handler starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Fingerprint of the kind's definition the task was planned with
    /// ([`crate::kinds::DynKind::fingerprint`]); absent from a version before roll-outs were
    /// checked, or when the planning orchestrator did not announce one. A worker with another
    /// definition leaves the subtask to a live worker with this one (docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl SubtaskMessage {
    /// Checks what a worker relies on: valid task and subtask ids, attempt counters and timeout
    /// within the limits the orchestrator itself applies.
    ///
    /// # Errors
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_task_id(&self.task)?;
        // Ids come from a kind's planner or a handler's spawn, which may take them from input.
        validate_subtask_id(&self.subtask)?;
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts)
            || !(1..=self.max_attempts).contains(&self.attempt)
        {
            return Err(ProtocolError::Invalid(format!(
                "attempt {} of {} is out of range (max_attempts is at most {MAX_ATTEMPTS_LIMIT})",
                self.attempt, self.max_attempts
            )));
        }
        if !(1..=TIMEOUT_MS_LIMIT).contains(&self.timeout_ms) {
            return Err(ProtocolError::Invalid(format!(
                "timeout_ms {} is out of range",
                self.timeout_ms
            )));
        }
        validate_worker_type(&self.worker_type)
    }
}

/// AMQP `type` of a message on a subtask queue that carries a [`SubtaskBatch`]; messages
/// without it carry one [`SubtaskMessage`].
pub const SUBTASK_BATCH_TYPE: &str = "chorus.subtask-batch";
/// AMQP `type` of a message on `chorus.results` that carries a [`ResultBatch`]; messages
/// without it carry one [`ResultMessage`].
pub const RESULT_BATCH_TYPE: &str = "chorus.result-batch";

/// Several first attempts of one task's subtasks of one worker type, in one message
/// (`options.batch_size`). Everything but the subtask's id, payload and dependencies is shared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskBatch {
    /// Task id.
    pub task: String,
    /// Kind name.
    pub kind: String,
    /// Attempts allowed per subtask.
    pub max_attempts: u32,
    /// Time limit of each attempt.
    pub timeout_ms: u64,
    /// Worker type whose queue carries it.
    #[serde(default = "default_worker_type")]
    pub worker_type: String,
    /// Spawn depth of the subtasks.
    #[serde(default)]
    pub depth: u32,
    /// When the task's deadline passes, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// Whether to publish `subtask.<status>` events.
    #[serde(default)]
    pub events: bool,
    /// Review round, as [`SubtaskMessage::round`].
    #[serde(default)]
    pub round: u32,
    /// The task's token budget, as [`SubtaskMessage::max_tokens`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// As [`SubtaskMessage::fingerprint`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The subtasks.
    pub items: Vec<BatchItem>,
}

/// One subtask of a [`SubtaskBatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// Subtask id.
    pub subtask: String,
    /// The kind's subtask, MessagePack-encoded by the kind.
    pub payload: ByteBuf,
    /// Subtasks whose outputs the handler receives as context.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl SubtaskBatch {
    /// Checks the shared fields as [`SubtaskMessage::validate`] does, every item's subtask id,
    /// and that there is work.
    ///
    /// # Errors
    /// The first field out of range, or an empty batch.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let Some(first) = self.items.first() else {
            return Err(ProtocolError::Invalid("subtask batch without items".into()));
        };
        for item in &self.items {
            validate_subtask_id(&item.subtask)?;
        }
        self.subtask(first).validate()
    }

    /// `item` as a subtask message of its own: its first attempt.
    pub fn subtask(&self, item: &BatchItem) -> SubtaskMessage {
        SubtaskMessage {
            task: self.task.clone(),
            subtask: item.subtask.clone(),
            kind: self.kind.clone(),
            attempt: 1,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            payload: item.payload.clone(),
            worker_type: self.worker_type.clone(),
            depends_on: item.depends_on.clone(),
            depth: self.depth,
            deadline_at_ms: self.deadline_at_ms,
            events: self.events,
            round: self.round,
            usage: Vec::new(),
            max_tokens: self.max_tokens,
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// The batch as one subtask message per item.
    pub fn into_subtasks(self) -> Vec<SubtaskMessage> {
        self.items.iter().map(|item| self.subtask(item)).collect()
    }
}

/// Several settled subtasks in one message on `chorus.results`, published by a worker for a
/// [`SubtaskBatch`] and acked by the synthesizer once every one is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultBatch {
    /// The results, each as it would travel alone.
    pub results: Vec<ResultMessage>,
}

/// How one subtask ended, as carried on `chorus.results` and stored in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubtaskOutcome {
    /// The handler's output, MessagePack-encoded by the kind.
    Succeeded(ByteBuf),
    /// The last attempt's error.
    Failed(String),
    /// Not run because a dependency failed (recorded by the synthesizer, never sent by workers).
    Skipped(String),
}

/// One settled subtask on `chorus.results`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// Task id.
    pub task: String,
    /// Subtask id.
    pub subtask: String,
    /// Attempts used, the successful or last one included.
    pub attempts: u32,
    /// Success with output, or failure with the error.
    pub outcome: SubtaskOutcome,
    /// Subtasks the handler spawned; recorded with the result, once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spawned: Vec<PlanEntry>,
    /// The round of the subtask message (or child task) this settles; the synthesizer takes
    /// a result of an earlier round than the task's as a duplicate. 0: not stated.
    #[serde(default)]
    pub round: u32,
    /// What the subtask's model calls used, every attempt's summed per model; recorded with
    /// the result, once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<Usage>,
}

/// A `subtask.<status>` event on `chorus.events` (`running`, `retrying`, `succeeded`,
/// `failed` from workers, `skipped` from the synthesizer), for tasks with
/// `options.subtask_events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskEvent {
    /// Task id.
    pub task: String,
    /// Subtask id.
    pub subtask: String,
    /// Worker type.
    pub worker_type: String,
    /// Attempt, 1 for the first.
    pub attempt: u32,
    /// What happened.
    pub status: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}
