//! Wire protocol: the messages on every queue, their encodings and their validation.
//!
//! Public messages (task requests and outcomes) come in MessagePack or JSON, chosen by the AMQP
//! `content_type` property. Internal messages (subtasks and results) are always MessagePack maps
//! with named fields, so that an operator reading `chorus.dead` can decode them with any tool.
//! `docs/protocol.md` is the normative description of everything here.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::{error::ProtocolError, text};

pub use crate::usage::{TokenStats, Usage};

/// Content type of MessagePack bodies; also assumed when a message has no `content_type`.
pub const MSGPACK: &str = "application/msgpack";
/// Content type of JSON bodies.
pub const JSON: &str = "application/json";
/// Longest task id accepted, in bytes.
pub const MAX_TASK_ID_BYTES: usize = 200;

/// How a public message body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `application/msgpack` (also `application/x-msgpack`, and the default).
    Msgpack,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// Picks the encoding from an AMQP `content_type`; an absent one means MessagePack.
    ///
    /// # Errors
    /// Any content type other than the MessagePack and JSON ones.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ProtocolError> {
        let Some(raw) = content_type else {
            return Ok(Self::Msgpack);
        };
        // Parameters such as `; charset=utf-8` do not change the encoding.
        let essence = raw
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => Ok(Self::Msgpack),
            JSON => Ok(Self::Json),
            _ => Err(ProtocolError::UnsupportedContentType(raw.to_owned())),
        }
    }

    /// The `content_type` property to put on a message in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Msgpack => MSGPACK,
            Self::Json => JSON,
        }
    }

    /// Encodes a value; MessagePack maps keep their field names.
    ///
    /// # Errors
    /// A value serde cannot represent in the encoding.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, ProtocolError> {
        match self {
            Self::Msgpack => encode(value),
            Self::Json => {
                serde_json::to_vec(value).map_err(|e| ProtocolError::Encode(e.to_string()))
            }
        }
    }

    /// Decodes a public message (a task request, a control message) in this encoding, strictly
    /// ([`strict`]): its root and every struct in it only from a map, no unknown field, nesting
    /// at most [`strict::MAX_DEPTH`] deep; rules in docs/protocol.md, "Decoding rules".
    ///
    /// # Errors
    /// [`ProtocolError::Decode`] naming the field: a body that is not valid in the encoding,
    /// an array where a map belongs, an unknown field, a missing field or a wrong type.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ProtocolError> {
        match self {
            Self::Msgpack => strict::from_msgpack(body),
            Self::Json => strict::from_json(body),
        }
        .map_err(|e| ProtocolError::Decode(e.to_string()))
    }

    /// Decodes a message Chorus wrote for a reader that may be of another version (an outcome,
    /// read by a client): fields it does not know are skipped, as serde does by default.
    ///
    /// # Errors
    /// A body that is not valid in the encoding or does not fit `T`.
    pub fn decode_lenient<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ProtocolError> {
        match self {
            Self::Msgpack => decode(body),
            Self::Json => {
                serde_json::from_slice(body).map_err(|e| ProtocolError::Decode(e.to_string()))
            }
        }
    }
}

/// Encodes an internal message as a MessagePack map with named fields.
///
/// # Errors
/// A value serde cannot represent in MessagePack.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    rmp_serde::to_vec_named(value).map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// Decodes an internal MessagePack body (a subtask, a result, what Redis holds), written by
/// Chorus as a map: on the hot path, so without the checks of [`Encoding::decode`], and fields a
/// newer version adds are skipped (docs/protocol.md, "Decoding rules").
///
/// # Errors
/// Bytes that are not MessagePack, or do not fit `T`.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    rmp_serde::from_slice(body).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// What to do with a task when some of its subtasks fail for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Any failed subtask fails the task: status `failed`, no output.
    #[default]
    Fail,
    /// Synthesize what succeeded: status `partial`, the failures listed in `errors`.
    Continue,
}

/// Per-task options, as a submitter may give them. Unknown keys are refused so typos surface.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// Most subtasks of this task in flight at once, across all workers (default: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Time limit of the whole task in milliseconds, from its first sight by an orchestrator;
    /// past it the task fails with "deadline exceeded" (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Rounds the kind's review may run, the first included (1..=20; default 1: no refinement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// Publish a `subtask.<status>` event on `chorus.events` for every subtask (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtask_events: Option<bool>,
    /// Attempts per subtask, first run included (1..=100; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time limit of one subtask attempt in milliseconds (default 300000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Partial-failure policy (default `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// Subtasks packed per message (1..=1000; default 1): for tiny subtasks, so that the
    /// per-message cost of the broker is paid once per batch. Workers run a batch's subtasks
    /// side by side, publish their results together and ack the batch once; a batch whose
    /// worker dies is redone whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Token budget of the whole task: prompt plus completion tokens over every step's usage
    /// (docs/kinds.md#usage). Once the recorded usage reaches it no further subtask starts,
    /// and those that would have fail with "token budget exceeded" (default: no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// Options with every default applied: what the services work with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedOptions {
    /// Attempts per subtask, first run included.
    pub max_attempts: u32,
    /// Time limit of one attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Partial-failure policy.
    pub on_failure: OnFailure,
    /// Most subtasks in flight at once; 0 means no cap.
    #[serde(default)]
    pub max_concurrency: u32,
    /// Time limit of the whole task, in milliseconds.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Review rounds allowed, the first included.
    #[serde(default = "one")]
    pub max_rounds: u32,
    /// Whether `subtask.<status>` events are published.
    #[serde(default)]
    pub subtask_events: bool,
    /// Subtasks packed per message.
    #[serde(default = "one")]
    pub batch_size: u32,
    /// Token budget of the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Default attempts per subtask.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default time limit of one attempt: five minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// Largest accepted `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// One day, in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest accepted `timeout_ms`: one day.
pub const TIMEOUT_MS_LIMIT: u64 = DAY_MS;
/// Largest accepted `deadline_ms`: thirty days.
pub const DEADLINE_MS_LIMIT: u64 = 30 * DAY_MS;
/// Largest accepted `max_rounds`.
pub const MAX_ROUNDS_LIMIT: u32 = 20;
/// Largest accepted `batch_size`.
pub const BATCH_SIZE_LIMIT: u32 = 1000;
/// Worker type of subtasks that name none.
pub const DEFAULT_WORKER_TYPE: &str = "default";
/// Longest worker type name, in bytes.
pub const MAX_WORKER_TYPE_BYTES: usize = 64;

impl TaskOptions {
    /// Applies defaults and checks ranges.
    ///
    /// # Errors
    /// A value out of its documented range, named in the message.
    pub fn resolve(&self) -> Result<ResolvedOptions, ProtocolError> {
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(ProtocolError::Invalid(format!(
                "options.max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {max_attempts}"
            )));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=TIMEOUT_MS_LIMIT).contains(&timeout_ms) {
            return Err(ProtocolError::Invalid(format!(
                "options.timeout_ms must be between 1 and {TIMEOUT_MS_LIMIT}, got {timeout_ms}"
            )));
        }
        if let Some(deadline_ms) = self.deadline_ms {
            if !(1..=DEADLINE_MS_LIMIT).contains(&deadline_ms) {
                return Err(ProtocolError::Invalid(format!(
                    "options.deadline_ms must be between 1 and {DEADLINE_MS_LIMIT}, got {deadline_ms}"
                )));
            }
        }
        if self.max_concurrency == Some(0) {
            return Err(ProtocolError::Invalid(
                "options.max_concurrency must be at least 1 (leave it out for no cap)".into(),
            ));
        }
        let max_rounds = self.max_rounds.unwrap_or(1);
        if !(1..=MAX_ROUNDS_LIMIT).contains(&max_rounds) {
            return Err(ProtocolError::Invalid(format!(
                "options.max_rounds must be between 1 and {MAX_ROUNDS_LIMIT}, got {max_rounds}"
            )));
        }
        let batch_size = self.batch_size.unwrap_or(1);
        if !(1..=BATCH_SIZE_LIMIT).contains(&batch_size) {
            return Err(ProtocolError::Invalid(format!(
                "options.batch_size must be between 1 and {BATCH_SIZE_LIMIT}, got {batch_size}"
            )));
        }
        if self.max_tokens == Some(0) {
            return Err(ProtocolError::Invalid(
                "options.max_tokens must be at least 1 (leave it out for no budget)".into(),
            ));
        }
        Ok(ResolvedOptions {
            max_tokens: self.max_tokens,
            batch_size,
            max_attempts,
            timeout_ms,
            on_failure: self.on_failure.unwrap_or_default(),
            max_concurrency: self.max_concurrency.unwrap_or(0),
            deadline_ms: self.deadline_ms,
            max_rounds,
            subtask_events: self.subtask_events.unwrap_or(false),
        })
    }
}

/// A task as a submitter publishes it on `chorus.tasks`.
///
/// `I` is how its input is held: any value by default (to build or read a request), or
/// [`RawInput`], the MessagePack bytes of the input, which is what the orchestrator decodes: a
/// large input then costs its own size, not a value tree many times larger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest<I = Value> {
    /// Name of a registered kind.
    pub kind: String,
    /// The kind's input, any value.
    pub input: I,
    /// Task id; when absent the message's `message_id` is used, else one is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Optional settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TaskOptions>,
    /// Set by Chorus on a child task: the subtask whose result the child's outcome becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}

/// The subtask a child task reports to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// Parent task id.
    pub task: String,
    /// Subtask of the parent that the child's outcome settles.
    pub subtask: String,
    /// The parent's review round that started the child (see [`SubtaskMessage::round`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub round: u32,
}

/// Checks a subtask id given by a planner or a spawning handler: the rules of task ids.
///
/// # Errors
/// As [`validate_task_id`], with the message naming a subtask id.
pub fn validate_subtask_id(id: &str) -> Result<(), ProtocolError> {
    validate_id(&format!("subtask id {}", text::quoted(id)), id)
}

/// Checks a worker type name: it becomes part of a queue name.
///
/// # Errors
/// An empty name, one over [`MAX_WORKER_TYPE_BYTES`], or one with characters other than
/// lower-case ASCII letters, digits, `-` and `_`.
pub fn validate_worker_type(name: &str) -> Result<(), ProtocolError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_WORKER_TYPE_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ProtocolError::Invalid(format!(
            "worker type {name:?} must be 1 to {MAX_WORKER_TYPE_BYTES} characters of a-z, 0-9, '-' and '_'"
        )))
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn default_worker_type() -> String {
    DEFAULT_WORKER_TYPE.to_owned()
}

fn is_default_worker_type(name: &str) -> bool {
    name == DEFAULT_WORKER_TYPE
}

/// A task of another kind that a subtask runs as a child: the child's outcome settles the
/// subtask (its output on success, its errors otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Kind of the child task.
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// Its options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TaskOptions>,
}

/// One subtask of a plan, as recorded in Redis: from the planner, a spawning handler or a
/// review round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// Subtask id, unique within the task.
    pub id: String,
    /// Worker type that runs it.
    #[serde(
        default = "default_worker_type",
        skip_serializing_if = "is_default_worker_type"
    )]
    pub worker_type: String,
    /// Subtasks that must succeed before this one is released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// 0 for planned subtasks; a spawned subtask is one deeper than its spawner.
    #[serde(default)]
    pub depth: u32,
    /// The kind's subtask, MessagePack-encoded by the kind (empty for a child task).
    pub payload: ByteBuf,
    /// Set when the subtask is a whole child task rather than a handler run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Box<ChildSpec>>,
}

/// Checks that a task id can be used as a key part and in log lines.
///
/// # Errors
/// An empty id, one over [`MAX_TASK_ID_BYTES`], or one with whitespace, control or format
/// characters (which [`text`] would escape: an id must read as itself in a log line, and two ids
/// must not look alike), or braces (which would break the Redis hash tag `{<id>}` of the task's
/// keys).
pub fn validate_task_id(id: &str) -> Result<(), ProtocolError> {
    validate_id("id", id)
}

/// Checks a request's kind name, as it arrives and before anything of the task is stored: the
/// name of an unknown kind would otherwise be kept in Redis in full (a task is claimed before
/// its kind is looked up). No kind's name needs more than [`text::MAX_NAME_BYTES`] (256), the
/// bound of a name in Chorus's own sentences.
///
/// # Errors
/// An empty name, or one over [`text::MAX_NAME_BYTES`] bytes (the message gives its length,
/// never the name).
pub fn validate_kind(kind: &str) -> Result<(), ProtocolError> {
    if kind.is_empty() {
        return Err(ProtocolError::Invalid("kind must not be empty".into()));
    }
    if kind.len() > text::MAX_NAME_BYTES {
        return Err(ProtocolError::Invalid(format!(
            "kind is {} bytes long; the limit is {}",
            kind.len(),
            text::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

fn validate_id(what: &str, id: &str) -> Result<(), ProtocolError> {
    if id.is_empty() {
        return Err(ProtocolError::Invalid(format!("{what} must not be empty")));
    }
    if id.len() > MAX_TASK_ID_BYTES {
        return Err(ProtocolError::Invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_TASK_ID_BYTES}",
            id.len()
        )));
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || text::escapes(c) || c == '{' || c == '}')
    {
        return Err(ProtocolError::Invalid(format!(
            "{what} must not contain whitespace, control or format characters, '{{' or '}}'"
        )));
    }
    Ok(())
}

/// Final status of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every subtask succeeded and the synthesis produced the output.
    Succeeded,
    /// Some subtasks failed, `on_failure` was `continue`: output from the rest.
    Partial,
    /// Subtasks failed under `on_failure: fail`, none succeeded, the synthesis failed, the
    /// deadline passed or a spawn limit was exceeded.
    Failed,
    /// The request was not a runnable task: bad message, unknown kind, invalid input.
    Rejected,
    /// Cancelled on request before it finished.
    Cancelled,
}

impl Status {
    /// Lower-case name, as on the wire and in `task.<status>` routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One error listed in an outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeError {
    /// The subtask that failed, or nil for an error of the task as a whole.
    pub subtask: Option<String>,
    /// What went wrong, for a human.
    pub message: String,
}

/// Counters of a finished task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Subtasks in the plan.
    pub subtasks: u64,
    /// Subtasks settled as succeeded.
    pub succeeded: u64,
    /// Subtasks settled as failed.
    pub failed: u64,
    /// Attempts beyond the first, summed over settled subtasks.
    pub retries: u64,
    /// From the orchestrator's first sight of the task to its outcome.
    pub duration_ms: u64,
    /// Subtasks settled as skipped because a dependency failed.
    #[serde(default)]
    pub skipped: u64,
    /// Review rounds run (1 when there was no refinement).
    #[serde(default)]
    pub rounds: u32,
    /// Tokens per model over every step's usage, failed attempts included (absent when no step
    /// reported any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, TokenStats>,
    /// Sum of the usages' costs, when some step reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// The one logical result of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Task id.
    pub id: String,
    /// Final status.
    pub status: Status,
    /// The kind's synthesized output; nil when there is none.
    pub output: Value,
    /// Failed subtasks and task-level errors.
    pub errors: Vec<OutcomeError>,
    /// Counters.
    pub stats: Stats,
}

impl Outcome {
    /// An outcome for a request that never became a running task. `message` (which may carry
    /// the request's own text) is escaped and bounded ([`text::reason`]), and so is `id`, which
    /// may be a `message_id` that failed validation.
    pub fn rejected(id: impl AsRef<str>, message: impl AsRef<str>) -> Self {
        Self {
            id: text::bounded(id.as_ref(), text::MAX_NAME_BYTES),
            status: Status::Rejected,
            output: Value::Nil,
            errors: vec![OutcomeError {
                subtask: None,
                message: text::reason(message.as_ref()),
            }],
            stats: Stats::default(),
        }
    }
}

/// Where a submitter wants the outcome: an AMQP queue name, its correlation id and encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTarget {
    /// Queue to publish to through the default exchange.
    pub reply_to: String,
    /// `correlation_id` to set (the request's, else the task id).
    pub correlation_id: String,
    /// Encoding of the request, used for the outcome.
    pub encoding: Encoding,
}

/// A control message on `chorus.control`, in MessagePack or JSON like task requests.
///
/// It decodes through `ControlFields` (`protocol/control.rs`), a plain struct: serde would buffer an internally
/// tagged enum's fields in a generic value first, outside the strict decoder's reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "lowercase",
    deny_unknown_fields,
    try_from = "ControlFields"
)]
pub enum Control {
    /// Cancel a task: it ends `cancelled`, queued subtasks are dropped, running handlers see
    /// their cancellation token.
    Cancel {
        /// Task id.
        task: String,
        /// Why, for the outcome's errors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Internal timer: check task `task` against its deadline (published by Chorus itself).
    Deadline {
        /// Task id.
        task: String,
    },
    /// Internal nudge: finish task `task` if it is settled. Published by a synthesizer that
    /// lacks the task's kind (or has another definition of it) for a live synthesizer that
    /// has it (docs/operations.md, "Rolling out a kind").
    Settle {
        /// Task id.
        task: String,
        /// Synthesizers that handed the task over so far; past a bound the task is finished
        /// by whichever synthesizer gets it.
        #[serde(default)]
        hops: u32,
    },
}

mod control;
mod messages;

pub use messages::{
    BatchItem, ResultBatch, ResultMessage, SubtaskBatch, SubtaskEvent, SubtaskMessage,
    SubtaskOutcome, RESULT_BATCH_TYPE, SUBTASK_BATCH_TYPE,
};

use control::ControlFields;

pub mod strict;

pub use strict::RawInput;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod documented_examples;

#[cfg(test)]
mod fuzz;
