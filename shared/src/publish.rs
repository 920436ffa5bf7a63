//! Publishing what moves a task along: released subtasks (a plan entry becomes a subtask
//! message on its worker type's queue, or — for a child task — a task request on `chorus.tasks`
//! that reports back to it), settled results, and `subtask.<status>` events.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_bytes::ByteBuf;

use crate::{
    amqp::{self, Outgoing, Publisher},
    clock::now_ms,
    error::{ProtocolError, ServiceError},
    protocol::{
        self, BatchItem, ChildSpec, ParentRef, PlanEntry, ResolvedOptions, ResultMessage,
        SubtaskBatch, SubtaskEvent, SubtaskMessage, TaskRequest,
    },
    store::Store,
    topology,
};

/// What every released subtask of one task carries besides its entry.
#[derive(Clone, Copy, Debug)]
pub struct TaskContext<'a> {
    /// Task id.
    pub task: &'a str,
    /// Kind name.
    pub kind: &'a str,
    /// Resolved options.
    pub options: &'a ResolvedOptions,
    /// When the task was claimed, ms since the Unix epoch (the deadline counts from it).
    pub created_ms: u64,
    /// Largest message body the consumers accept: a batch is cut well below it.
    pub max_message_bytes: usize,
    /// The task's review round the entries belong to (1 for the plan and what it spawns).
    pub round: u32,
    /// Fingerprint of the kind's definition the task was planned with, put on every message
    /// ([`SubtaskMessage::fingerprint`]).
    pub fingerprint: Option<&'a str>,
}

impl TaskContext<'_> {
    /// When the task's deadline passes, if it has one.
    pub fn deadline_at_ms(&self) -> Option<u64> {
        self.options
            .deadline_ms
            .map(|ms| self.created_ms.saturating_add(ms))
    }
}

/// Id of the child task that subtask `subtask` of task `task` runs in review round `round`:
/// `<task>/<subtask>`, with `~r<round>` after it from round 2 on (a subtask a review sends
/// back runs a new child, not the finished one), or a digest of it when that is too long for
/// a task id.
pub fn child_task_id(task: &str, subtask: &str, round: u32) -> String {
    let id = if round > 1 {
        format!("{task}/{subtask}~r{round}")
    } else {
        format!("{task}/{subtask}")
    };
    if id.len() <= protocol::MAX_TASK_ID_BYTES {
        return id;
    }
    let digest = format!(
        "{:016x}{:016x}",
        fnv1a(id.as_bytes(), 0),
        fnv1a(id.as_bytes(), 1)
    );
    let mut prefix_end = CHILD_ID_PREFIX_BYTES.min(task.len());
    while !task.is_char_boundary(prefix_end) {
        prefix_end -= 1;
    }
    format!("{}/{digest}", &task[..prefix_end])
}

/// Bytes of the parent's id kept before a digested child id: with the `/` and the 32 hex
/// digits of the digest, well under [`protocol::MAX_TASK_ID_BYTES`].
const CHILD_ID_PREFIX_BYTES: usize = 100;

/// FNV-1a's 64-bit offset basis (from the FNV specification).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime (from the FNV specification).
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64 bits, seeded: a stable digest (ids must come out the same in every process and
/// every build, which `std`'s hasher does not promise).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS ^ seed;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Publishes `entries` with confirms: handler subtasks to their worker type's queue (declared
/// on first use), child tasks to `chorus.tasks` (remembered as children first, so a cancel of
/// the parent reaches them). Publishing again is harmless: results and claims are idempotent.
/// Callers have just found the task unfinished, so subtask messages carry
/// [`topology::LIVE_AT_HEADER`].
///
/// # Errors
/// Redis or the broker failed; the caller keeps the entries to publish again.
pub async fn publish_entries(
    store: &Store,
    publisher: &Publisher,
    context: TaskContext<'_>,
    entries: &[PlanEntry],
) -> Result<(), ServiceError> {
    if entries.is_empty() {
        return Ok(());
    }
    let queues = subtask_queues(publisher, entries).await?;
    let mut messages: Vec<Message<'_>> = Vec::with_capacity(entries.len());
    // Handler subtasks to batch, by queue, in the order their queues first come up.
    let mut batches: Vec<(&str, Vec<&PlanEntry>)> = Vec::new();
    for entry in entries {
        if let Some(child) = &entry.child {
            messages.push(child_request(store, context, entry, child).await?);
            continue;
        }
        let queue = queues
            .get(entry.worker_type.as_str())
            .map_or(topology::SUBTASKS_QUEUE, String::as_str);
        if context.options.batch_size > 1 {
            match batches.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, batch)) => batch.push(entry),
                None => batches.push((queue, vec![entry])),
            }
        } else {
            let body = protocol::encode(&first_attempt(context, entry))?;
            messages.push(Message::single(queue, body));
        }
    }
    for (queue, batch) in batches {
        messages.extend(batch_messages(context, queue, &batch)?);
    }
    publish_messages(publisher, &messages).await
}

/// The subtask queue of each worker type of the handler subtasks among `entries` (declared on
/// first use by `publisher`), by worker type.
async fn subtask_queues<'e>(
    publisher: &Publisher,
    entries: &'e [PlanEntry],
) -> Result<HashMap<&'e str, String>, ServiceError> {
    // Usually one worker type for a whole batch: its queue is looked up once.
    let mut queues: HashMap<&str, String> = HashMap::new();
    for entry in entries.iter().filter(|entry| entry.child.is_none()) {
        if !queues.contains_key(entry.worker_type.as_str()) {
            let queue = publisher.subtask_queue(&entry.worker_type).await?;
            queues.insert(&entry.worker_type, queue);
        }
    }
    Ok(queues)
}

/// The task request that starts the child task of `entry`, recorded first as a child of the
/// context's task (so a cancel of the parent reaches it).
async fn child_request<'q>(
    store: &Store,
    context: TaskContext<'_>,
    entry: &PlanEntry,
    child: &ChildSpec,
) -> Result<Message<'q>, ServiceError> {
    let child_id = child_task_id(context.task, &entry.id, context.round);
    store.add_child(context.task, &child_id).await?;
    let body = protocol::encode(&TaskRequest {
        kind: child.kind.clone(),
        input: child.input.clone(),
        id: Some(child_id.clone()),
        options: child.options.clone(),
        parent: Some(ParentRef {
            task: context.task.to_owned(),
            subtask: entry.id.clone(),
            round: context.round,
        }),
    })?;
    let mut message = Message::single(topology::TASKS_QUEUE, body);
    message.message_id = Some(child_id);
    message.subtask = false;
    Ok(message)
}

/// The messages carrying `batch` (handler subtasks for `queue`): batches, and plain subtask
/// messages for entries packed alone.
fn batch_messages<'q>(
    context: TaskContext<'_>,
    queue: &'q str,
    batch: &[&PlanEntry],
) -> Result<Vec<Message<'q>>, ServiceError> {
    pack(context, batch)
        .into_iter()
        .map(|packed| {
            Ok(match packed {
                Packed::One(entry) => {
                    Message::single(queue, protocol::encode(&first_attempt(context, entry))?)
                }
                Packed::Many(batch) => Message {
                    queue,
                    body: protocol::encode(&batch)?,
                    kind: Some(protocol::SUBTASK_BATCH_TYPE),
                    message_id: None,
                    subtask: true,
                },
            })
        })
        .collect()
}

/// Publishes `messages` persistent and mandatory, with their confirms pipelined; subtask
/// messages carry [`topology::LIVE_AT_HEADER`] set to now.
async fn publish_messages(
    publisher: &Publisher,
    messages: &[Message<'_>],
) -> Result<(), ServiceError> {
    // Every caller has just found the task unfinished: workers that get these within a second
    // need not ask Redis again.
    let mut live_at = FieldTable::default();
    live_at.insert(
        ShortString::from(topology::LIVE_AT_HEADER),
        AMQPValue::LongLongInt(i64::try_from(now_ms()).unwrap_or(i64::MAX)),
    );
    publisher
        .publish_all(messages.iter().map(|message| {
            let mut properties = amqp::persistent(protocol::MSGPACK);
            if message.subtask {
                properties = properties.with_headers(live_at.clone());
            }
            if let Some(message_id) = &message.message_id {
                properties = properties.with_message_id(ShortString::from(message_id.as_str()));
            }
            if let Some(kind) = message.kind {
                properties = properties.with_type(ShortString::from(kind));
            }
            Outgoing {
                exchange: "",
                routing_key: message.queue,
                body: &message.body,
                properties,
                mandatory: true,
            }
        }))
        .await?;
    Ok(())
}

/// One message `publish_entries` sends.
struct Message<'a> {
    queue: &'a str,
    body: Vec<u8>,
    /// AMQP `type`: set on batches.
    kind: Option<&'static str>,
    message_id: Option<String>,
    /// A subtask (or batch) for a worker, rather than a child task request.
    subtask: bool,
}

impl<'a> Message<'a> {
    fn single(queue: &'a str, body: Vec<u8>) -> Self {
        Self {
            queue,
            body,
            kind: None,
            message_id: None,
            subtask: true,
        }
    }
}

/// The first attempt of a handler subtask.
fn first_attempt(context: TaskContext<'_>, entry: &PlanEntry) -> SubtaskMessage {
    SubtaskMessage {
        task: context.task.to_owned(),
        subtask: entry.id.clone(),
        kind: context.kind.to_owned(),
        attempt: 1,
        max_attempts: context.options.max_attempts,
        timeout_ms: context.options.timeout_ms,
        payload: ByteBuf::from(entry.payload.as_ref()),
        worker_type: entry.worker_type.clone(),
        depends_on: entry.depends_on.clone(),
        depth: entry.depth,
        deadline_at_ms: context.deadline_at_ms(),
        events: context.options.subtask_events,
        round: context.round,
        usage: Vec::new(),
        max_tokens: context.options.max_tokens,
        fingerprint: context.fingerprint.map(str::to_owned),
    }
}

/// A message's worth of subtasks: a lone one travels as a plain subtask message.
enum Packed<'a> {
    One(&'a PlanEntry),
    Many(SubtaskBatch),
}

/// Bytes a batch item's MessagePack framing (its map, its three keys, the headers of its
/// values) adds besides its strings and payload, roughly.
const ITEM_FRAMING_BYTES: usize = 32;
/// Bytes a dependency id's framing adds besides the id (a MessagePack string header).
const DEPENDENCY_FRAMING_BYTES: usize = 2;

/// Bytes a batch item adds to its message, roughly: what the cut below needs.
fn item_bytes(entry: &PlanEntry) -> usize {
    ITEM_FRAMING_BYTES
        + entry.id.len()
        + entry.payload.len()
        + entry
            .depends_on
            .iter()
            .map(|d| d.len() + DEPENDENCY_FRAMING_BYTES)
            .sum::<usize>()
}

/// A batch (of subtasks or of results) fills at most this fraction of the message limit, so
/// that the results of a batch of subtasks, as large as their inputs, fit in a message too.
const BATCH_SHARE_OF_LIMIT: usize = 4;

/// Most bytes of a batch under the message limit `max_message_bytes` (at least 1).
fn batch_byte_cap(max_message_bytes: usize) -> usize {
    (max_message_bytes / BATCH_SHARE_OF_LIMIT).max(1)
}

/// Packs entries of one worker type (and one depth, which a batch shares) into batches of at
/// most `batch_size` entries and about a quarter of the message limit in bytes, so results
/// of the same size fit too.
fn pack<'a>(context: TaskContext<'_>, entries: &[&'a PlanEntry]) -> Vec<Packed<'a>> {
    let size_cap = batch_byte_cap(context.max_message_bytes);
    let count_cap = usize::try_from(context.options.batch_size)
        .unwrap_or(1)
        .max(1);
    let mut out = Vec::new();
    let mut current: Vec<&'a PlanEntry> = Vec::new();
    let mut bytes = 0;
    let flush = |current: &mut Vec<&'a PlanEntry>, out: &mut Vec<Packed<'a>>| {
        match current.len() {
            0 => {}
            1 => out.push(Packed::One(current[0])),
            _ => {
                let first = current[0];
                out.push(Packed::Many(SubtaskBatch {
                    task: context.task.to_owned(),
                    kind: context.kind.to_owned(),
                    max_attempts: context.options.max_attempts,
                    timeout_ms: context.options.timeout_ms,
                    worker_type: first.worker_type.clone(),
                    depth: first.depth,
                    deadline_at_ms: context.deadline_at_ms(),
                    events: context.options.subtask_events,
                    round: context.round,
                    max_tokens: context.options.max_tokens,
                    fingerprint: context.fingerprint.map(str::to_owned),
                    items: current
                        .iter()
                        .map(|entry| BatchItem {
                            subtask: entry.id.clone(),
                            payload: ByteBuf::from(entry.payload.as_ref()),
                            depends_on: entry.depends_on.clone(),
                        })
                        .collect(),
                }));
            }
        }
        current.clear();
    };
    for &entry in entries {
        let size = item_bytes(entry);
        let depth_differs = current
            .first()
            .is_some_and(|first| first.depth != entry.depth);
        if !current.is_empty()
            && (current.len() >= count_cap || bytes + size > size_cap || depth_differs)
        {
            flush(&mut current, &mut out);
            bytes = 0;
        }
        current.push(entry);
        bytes += size;
    }
    flush(&mut current, &mut out);
    out
}

/// Publishes a settled subtask to `chorus.results` with a confirm.
///
/// # Errors
/// The broker did not confirm.
pub async fn publish_result(
    publisher: &Publisher,
    result: &ResultMessage,
) -> Result<(), ServiceError> {
    let body = protocol::encode(result)?;
    publisher
        .publish(Outgoing {
            exchange: topology::OUTPUTS_EXCHANGE,
            routing_key: topology::RESULTS_QUEUE,
            body: &body,
            properties: amqp::persistent(protocol::MSGPACK),
            mandatory: true,
        })
        .await?;
    Ok(())
}

/// Publishes the results of a subtask batch to `chorus.results` with their confirms
/// pipelined: as one [`ResultBatch`](crate::protocol::ResultBatch) message, or several when
/// together they would pass a quarter of `max_message_bytes` (a result alone in its message
/// goes as a plain result). The caller acks the batch only after this returns: a crash before
/// then redoes the batch, and results already published are then duplicates the synthesizer
/// ignores.
///
/// # Errors
/// A result does not encode, or the broker did not confirm.
pub async fn publish_results(
    publisher: &Publisher,
    results: &[ResultMessage],
    max_message_bytes: usize,
) -> Result<(), ServiceError> {
    let encoded = results
        .iter()
        .map(protocol::encode)
        .collect::<Result<Vec<_>, _>>()?;
    publish_encoded_results(publisher, &encoded, max_message_bytes).await
}

/// [`publish_results`] of results already encoded one by one (`protocol::encode` of each
/// [`ResultMessage`]), which may belong to different tasks.
///
/// # Errors
/// The broker did not confirm.
pub async fn publish_encoded_results(
    publisher: &Publisher,
    encoded: &[Vec<u8>],
    max_message_bytes: usize,
) -> Result<(), ServiceError> {
    let size_cap = batch_byte_cap(max_message_bytes);
    // Cut into runs that stay under the cap; a run of one goes as a plain result message, so a
    // result never grows by a batch's framing.
    let mut runs: Vec<&[Vec<u8>]> = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (at, body) in encoded.iter().enumerate() {
        if at > start && bytes + body.len() > size_cap {
            runs.push(&encoded[start..at]);
            start = at;
            bytes = 0;
        }
        bytes += body.len();
    }
    if start < encoded.len() {
        runs.push(&encoded[start..]);
    }
    let batches = runs
        .iter()
        .map(|run| match run {
            [_] => Ok(None),
            _ => result_batch_body(run).map(Some),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let messages = runs.iter().zip(&batches).filter_map(|(run, batch)| {
        let properties = amqp::persistent(protocol::MSGPACK);
        let (body, properties) = match (batch, run) {
            (Some(body), _) => (
                body.as_slice(),
                properties.with_type(ShortString::from(protocol::RESULT_BATCH_TYPE)),
            ),
            (None, [single]) => (single.as_slice(), properties),
            // Only a run of one has no batch body.
            (None, _) => return None,
        };
        Some(Outgoing {
            exchange: topology::OUTPUTS_EXCHANGE,
            routing_key: topology::RESULTS_QUEUE,
            body,
            properties,
            mandatory: true,
        })
    });
    publisher.publish_all(messages).await?;
    Ok(())
}

/// Most bytes of a [`ResultBatch`] before its results: a one-entry map header, the key
/// `results` and an array header of up to 5 bytes.
const RESULT_BATCH_HEADER_BYTES: usize = 16;

/// A [`ResultBatch`] body around results already encoded one by one: the same bytes
/// `protocol::encode` would give, without encoding the outputs twice.
fn result_batch_body(encoded: &[Vec<u8>]) -> Result<Vec<u8>, ServiceError> {
    let total: usize = encoded.iter().map(Vec::len).sum();
    let mut body = Vec::with_capacity(total + RESULT_BATCH_HEADER_BYTES);
    let count = u32::try_from(encoded.len())
        .map_err(|_| protocol_error("too many results for one message"))?;
    rmp::encode::write_map_len(&mut body, 1).map_err(|e| protocol_error(&e.to_string()))?;
    rmp::encode::write_str(&mut body, "results").map_err(|e| protocol_error(&e.to_string()))?;
    rmp::encode::write_array_len(&mut body, count).map_err(|e| protocol_error(&e.to_string()))?;
    for result in encoded {
        body.extend_from_slice(result);
    }
    Ok(body)
}

fn protocol_error(message: &str) -> ServiceError {
    ProtocolError::Encode(message.to_owned()).into()
}

/// Publishes a `subtask.<status>` event on `chorus.events`. Events are for dashboards: one that
/// cannot be published is logged, never retried, and the work it describes does not wait for
/// its confirm ([`Publisher::publish_unawaited`]).
pub async fn announce(publisher: &Publisher, event: &SubtaskEvent) {
    let Ok(body) = protocol::encode(event) else {
        return;
    };
    let routing_key = format!("subtask.{}", event.status);
    let message = Outgoing {
        exchange: topology::EVENTS_EXCHANGE,
        routing_key: &routing_key,
        body: &body,
        properties: lapin::BasicProperties::default()
            .with_content_type(ShortString::from(protocol::MSGPACK)),
        mandatory: false,
    };
    let published = publisher
        .publish_unawaited(message, "a subtask event")
        .await;
    if let Err(error) = published {
        tracing::debug!(task = %event.task, %error, "cannot publish a subtask event");
    }
}

#[cfg(test)]
mod tests;
