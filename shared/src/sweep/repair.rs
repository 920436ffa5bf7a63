//! Repairs the tasks a sweep found stuck (docs/reliability.md, "Stuck tasks"): a pending
//! subtask whose copy the broker dead-lettered is settled as failed with the reason, through
//! `chorus.results` like a worker's result; a released subtask whose message is in no queue is
//! published again from the recorded plan. Both go through the normal fan-in, which records a
//! subtask once: a late real result, or a duplicate run, changes nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
    time::Duration,
};

use lapin::{types::ShortString, BasicProperties, Connection};
use redis::Script;

use super::Stuck;
use crate::{
    admin::dead::{self, DeadLetter},
    amqp::{self, Publisher},
    config::ConnectArgs,
    error::{BrokerError, ServiceError, StoreError},
    observe::metrics,
    protocol::{self, PlanEntry, ResultMessage, SubtaskBatch, SubtaskMessage, SubtaskOutcome},
    publish::{self, TaskContext},
    store::{Store, TaskKeys, TaskRecord, TaskState},
    text, topology,
};

#[cfg(test)]
mod tests;

static IN_FLIGHT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("in_flight.lua")));

/// Dead letters a repair reads from the head of `chorus.dead`, at most.
const DEAD_LETTERS_READ: usize = 1_000;
/// Released subtasks of one task a repair looks at, at most (the rest wait for the next).
const CANDIDATES: usize = 1_000;
/// The longest delay whose queue a repair checks for a subtask waiting to be retried: a day,
/// far above any retry back-off or rate-limit deferral.
const LONGEST_DELAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Messages of one delay queue a repair reads, at most; past it, it republishes nothing.
const DELAYED_READ: usize = 1_000;

/// What the repair needs besides Redis: the broker, and the largest message (for batches).
#[derive(Clone, Debug)]
pub struct RepairSettings {
    /// How to reach RabbitMQ (the synthesizer's own flags).
    pub connect: ConnectArgs,
    /// Largest message body the consumers accept, bytes.
    pub max_message_bytes: usize,
}

/// What one repair did, in subtasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    /// Settled as failed: the broker had dead-lettered them.
    pub failed: usize,
    /// Published again: their message was in no queue.
    pub republished: usize,
}

/// A dead-lettered copy of a subtask.
struct DeadCopy {
    message: SubtaskMessage,
    reason: String,
}

/// The subtasks a dead letter carries (none for a letter that is not a subtask or a batch
/// of them from a subtask queue).
fn subtasks_of(
    letter: &DeadLetter,
    body: &[u8],
    properties: &BasicProperties,
) -> Vec<SubtaskMessage> {
    let from_subtask_queue = letter
        .queue
        .as_deref()
        .is_some_and(|queue| queue.starts_with(topology::SUBTASKS_QUEUE));
    if !from_subtask_queue {
        return Vec::new();
    }
    decode_subtasks(body, properties)
}

/// The subtasks a message body carries: a subtask, a batch of them (by its `type`), or none.
fn decode_subtasks(body: &[u8], properties: &BasicProperties) -> Vec<SubtaskMessage> {
    let batch = amqp::property_str(properties.kind()) == Some(protocol::SUBTASK_BATCH_TYPE);
    if batch {
        protocol::decode::<SubtaskBatch>(body)
            .map_or_else(|_| Vec::new(), SubtaskBatch::into_subtasks)
    } else {
        protocol::decode::<SubtaskMessage>(body).map_or_else(|_| Vec::new(), |m| vec![m])
    }
}

/// The error a subtask dead-lettered for `reason` (the broker's, or Chorus's own) settles with.
pub fn failure_reason(reason: Option<&str>) -> String {
    match reason {
        // A policy may lower the queue's own limit (the broker applies the lower one), so the
        // count is named as a bound, not as what happened.
        Some("delivery_limit") => format!(
            "dead-lettered by the broker at its delivery limit (delivered that often without an ack, at most {} times unless a policy lowers it: a worker crashing on it?)",
            topology::BROKER_DELIVERY_LIMIT
        ),
        Some(other) => format!("dead-lettered ({})", text::reason(other)),
        None => "dead-lettered".to_owned(),
    }
}

/// The dead-lettered subtasks of `tasks` among the first [`DEAD_LETTERS_READ`] letters of
/// `chorus.dead`, by task and subtask (none removed).
async fn dead_copies(
    connection: &Connection,
    tasks: &HashSet<&str>,
) -> Result<HashMap<(String, String), DeadCopy>, BrokerError> {
    let mut found = HashMap::new();
    dead::visit(connection, DEAD_LETTERS_READ, |letter, body, properties| {
        for message in subtasks_of(letter, body, properties) {
            if tasks.contains(message.task.as_str()) {
                let key = (message.task.clone(), message.subtask.clone());
                let reason = failure_reason(letter.reason.as_deref());
                found.entry(key).or_insert(DeadCopy { message, reason });
            }
        }
    })
    .await?;
    Ok(found)
}

/// Ready messages in `queue`, or `None` when it does not exist.
///
/// # Errors
/// The connection is gone.
async fn ready_messages(connection: &Connection, queue: &str) -> Result<Option<u32>, BrokerError> {
    Ok(amqp::queue_counts(connection, queue)
        .await?
        .map(|counts| counts.ready))
}

/// The subtasks waiting in the delay queues (retries, deferrals), by task and subtask, all
/// buckets up to [`LONGEST_DELAY`] (declared if missing) read without removing anything; `None` when a bucket holds
/// more than [`DELAYED_READ`] messages, too many to say which subtasks wait there.
async fn delayed_subtasks(
    connection: &Connection,
) -> Result<Option<HashSet<(String, String)>>, BrokerError> {
    // Declared first (idempotent, as every service declares them): a passive look at a bucket
    // no process declared yet would close its channel, which the AMQP client logs as an error.
    let channel = connection.create_channel().await?;
    topology::declare(&channel, LONGEST_DELAY).await?;
    drop(
        channel
            .close(amqp::REPLY_SUCCESS, ShortString::from("done"))
            .await,
    );
    let mut found = HashSet::new();
    for (queue, _) in topology::delay_queues_up_to(LONGEST_DELAY) {
        let ready = ready_messages(connection, &queue).await?.unwrap_or(0);
        if ready == 0 {
            continue;
        }
        if usize::try_from(ready).map_or(true, |ready| ready > DELAYED_READ) {
            return Ok(None);
        }
        dead::peek(connection, &queue, DELAYED_READ, |_, body, properties| {
            for message in decode_subtasks(body, properties) {
                found.insert((message.task, message.subtask));
            }
        })
        .await?;
    }
    Ok(Some(found))
}

/// The broker side of one repair.
struct Broker<'c> {
    connection: &'c Connection,
    publisher: Publisher,
    /// The subtasks in the delay queues when the repair began (`None`: too many to read).
    delayed: Option<HashSet<(String, String)>>,
    max_message_bytes: usize,
}

/// Repairs `stuck` (tasks one sweep found stuck): for each, settles as failed its pending
/// subtasks found dead-lettered in `chorus.dead`, and publishes again those released that
/// wait in no delay queue and whose subtask queue holds no ready message at all. Each task repaired starts its stuck
/// clock afresh, so that the next repair of it comes no sooner than `--stuck-after-ms`.
///
/// # Errors
/// RabbitMQ or Redis failed (what was repaired before stays repaired).
pub async fn repair(
    store: &Store,
    settings: &RepairSettings,
    stuck: &[Stuck],
) -> Result<Repaired, ServiceError> {
    let mut repaired = Repaired::default();
    if stuck.is_empty() {
        return Ok(repaired);
    }
    let nodes = settings
        .connect
        .amqp_nodes()
        .map_err(BrokerError::Settings)?;
    let timeout = settings.connect.amqp_connect_timeout();
    let connection = amqp::connect_any(&nodes, 0, "chorus-synthesizer (sweep)", timeout)
        .await?
        .connection;
    let outcome = async {
        let tasks: HashSet<&str> = stuck.iter().map(|task| task.id.as_str()).collect();
        let mut dead = dead_copies(&connection, &tasks).await?;
        let broker = Broker {
            publisher: Publisher::open(&connection, settings.connect.publish_timeout()).await?,
            // Read before the subtask queues: a message moving on from a delay queue meanwhile
            // is then seen in its subtask queue, never missed in both.
            delayed: delayed_subtasks(&connection).await?,
            connection: &connection,
            max_message_bytes: settings.max_message_bytes,
        };
        for task in stuck {
            let done = repair_task(store, &broker, &task.id, &mut dead).await?;
            repaired.failed += done.failed;
            repaired.republished += done.republished;
        }
        Ok::<_, ServiceError>(())
    }
    .await;
    drop(
        connection
            .close(amqp::REPLY_SUCCESS, ShortString::from("done"))
            .await,
    );
    outcome.map(|()| repaired)
}

/// Repairs one stuck task `id` (see [`repair`]); `dead` holds the dead-lettered copies found.
async fn repair_task(
    store: &Store,
    broker: &Broker<'_>,
    id: &str,
    dead: &mut HashMap<(String, String), DeadCopy>,
) -> Result<Repaired, ServiceError> {
    let mut repaired = Repaired::default();
    let Some(record) = store.task(id).await? else {
        return Ok(repaired);
    };
    if record.state != TaskState::Running {
        return Ok(repaired);
    }
    let mut missing = Vec::new();
    for subtask in store.in_flight(id).await? {
        match dead.remove(&(id.to_owned(), subtask.clone())) {
            // A copy of an earlier round would settle nothing (the fan-in takes its result as
            // a duplicate): the subtask of this round is judged by its queue.
            Some(copy) if copy.message.round == 0 || copy.message.round >= record.round => {
                settle_failed(broker, copy).await?;
                repaired.failed += 1;
            }
            _ => missing.push(subtask),
        }
    }
    let entries: Vec<PlanEntry> = store
        .entries(id, &missing)
        .await?
        .into_iter()
        .filter(|entry| entry.child.is_none())
        .collect();
    repaired.republished = republish_lost(store, broker, id, &record, entries).await?;
    if repaired != Repaired::default() {
        store.restart_stuck_clock(id).await?;
    }
    Ok(repaired)
}

/// Publishes to `chorus.results` the failed result of a subtask the broker dead-lettered.
async fn settle_failed(broker: &Broker<'_>, copy: DeadCopy) -> Result<(), ServiceError> {
    let message = copy.message;
    tracing::warn!(
        task = %text::quoted(&message.task),
        subtask = %text::quoted(&message.subtask),
        reason = %copy.reason,
        "stuck task repaired: its subtask is in chorus.dead; settling it as failed"
    );
    let result = ResultMessage {
        task: message.task,
        subtask: message.subtask,
        attempts: message.attempt.max(1),
        outcome: SubtaskOutcome::Failed(copy.reason),
        spawned: Vec::new(),
        round: message.round,
        usage: message.usage,
    };
    publish::publish_result(&broker.publisher, &result).await?;
    metrics::stuck_subtasks_repaired("failed", 1);
    Ok(())
}

/// Publishes again those of `entries` (released handler subtasks of task `id`, not dead-lettered)
/// whose queue holds no message, when the delay queues hold none either and no worker holds
/// subtasks of the task ([`Store::hold`]); returns how many.
async fn republish_lost(
    store: &Store,
    broker: &Broker<'_>,
    id: &str,
    record: &TaskRecord,
    entries: Vec<PlanEntry>,
) -> Result<usize, ServiceError> {
    if entries.is_empty() {
        return Ok(0);
    }
    // An unacked message is invisible to the queue checks below: a worker holding one (a
    // subtask running longer than the stuck time, or waiting in its prefetch) says so.
    if store.is_held(id).await? {
        tracing::info!(task = %text::quoted(id), subtasks = entries.len(), "stuck task left alone: a worker holds its subtasks (running or prefetched)");
        return Ok(0);
    }
    let Some(delayed) = &broker.delayed else {
        tracing::info!(task = %text::quoted(id), subtasks = entries.len(), "stuck task left alone: a delay queue holds too many messages to tell whether its subtasks wait there");
        return Ok(0);
    };
    let mut counts: HashMap<String, Option<u32>> = HashMap::new();
    let mut lost = Vec::new();
    for entry in entries {
        if delayed.contains(&(id.to_owned(), entry.id.clone())) {
            tracing::info!(task = %text::quoted(id), subtask = %text::quoted(&entry.id), "stuck task left alone: its subtask waits in a delay queue");
            continue;
        }
        let queue = topology::subtask_queue(&entry.worker_type);
        if !counts.contains_key(&queue) {
            let count = ready_messages(broker.connection, &queue).await?;
            counts.insert(queue.clone(), count);
        }
        match counts.get(&queue).copied().flatten() {
            Some(backlog) if backlog > 0 => {
                tracing::info!(task = %text::quoted(id), subtask = %text::quoted(&entry.id), queue = %queue, backlog, "stuck task left alone: its subtask's queue has a backlog");
            }
            _ => lost.push(entry),
        }
    }
    if lost.is_empty() {
        return Ok(0);
    }
    let options = record.resolved_options(id)?;
    let context = TaskContext {
        task: id,
        kind: &record.kind,
        options: &options,
        created_ms: record.created_ms,
        max_message_bytes: broker.max_message_bytes,
        round: record.round,
        fingerprint: record.fingerprint.as_deref(),
    };
    publish::publish_entries(store, &broker.publisher, context, &lost).await?;
    let ids: Vec<&str> = lost.iter().map(|entry| entry.id.as_str()).collect();
    tracing::warn!(task = %text::quoted(id), subtasks = ?ids, "stuck task repaired: its subtasks' messages were in no queue; published them again from the plan");
    metrics::stuck_subtasks_repaired("republished", lost.len());
    Ok(lost.len())
}

impl Store {
    /// The pending subtasks of task `id` that were released (not waiting for a dependency or
    /// a slot), at most [`CANDIDATES`].
    ///
    /// # Errors
    /// Redis failed.
    pub async fn in_flight(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(IN_FLIGHT
            .key(keys.pending())
            .key(keys.waiting())
            .key(keys.ready())
            .arg(CANDIDATES)
            .invoke_async(&mut self.conn())
            .await?)
    }

    /// Forgets the sweeper's note of task `id`'s progress: the next sweep starts its stuck
    /// clock afresh.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn restart_stuck_clock(&self, id: &str) -> Result<(), StoreError> {
        let _: u64 = redis::cmd("HDEL")
            .arg(TaskKeys::new(id).task())
            .arg("sweep_mark")
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
