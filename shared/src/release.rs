//! Publishing what moves a task along: released subtasks (a plan entry becomes a subtask
//! message on its worker type's queue, or — for a child task — a task request on `chorus.tasks`
//! that reports back to it), settled results, and `subtask.<status>` events.

use std::collections::HashMap;

use lapin::types::ShortString;
use serde_bytes::ByteBuf;

use crate::{
    amqp::{self, Outgoing, Publisher},
    error::ServiceError,
    protocol::{
        self, ParentRef, PlanEntry, ResolvedOptions, ResultMessage, SubtaskEvent, SubtaskMessage,
        TaskRequest,
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
}

impl TaskContext<'_> {
    /// When the task's deadline passes, if it has one.
    pub fn deadline_at_ms(&self) -> Option<u64> {
        self.options
            .deadline_ms
            .map(|ms| self.created_ms.saturating_add(ms))
    }
}

/// Id of the child task that subtask `subtask` of task `task` runs: `<task>/<subtask>`, or a
/// digest of it when that is too long for a task id.
pub fn child_task_id(task: &str, subtask: &str) -> String {
    let id = format!("{task}/{subtask}");
    if id.len() <= protocol::MAX_TASK_ID_BYTES {
        return id;
    }
    let digest = format!(
        "{:016x}{:016x}",
        fnv1a(id.as_bytes(), 0),
        fnv1a(id.as_bytes(), 1)
    );
    let mut prefix_end = 100.min(task.len());
    while !task.is_char_boundary(prefix_end) {
        prefix_end -= 1;
    }
    format!("{}/{digest}", &task[..prefix_end])
}

/// FNV-1a, 64 bits, seeded: a stable digest (ids must come out the same in every process and
/// every build, which `std`'s hasher does not promise).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Publishes `entries` with confirms: handler subtasks to their worker type's queue (declared
/// on first use), child tasks to `chorus.tasks` (remembered as children first, so a cancel of
/// the parent reaches them). Publishing again is harmless: results and claims are idempotent.
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
    // Usually one worker type for a whole batch: its queue is looked up once.
    let mut queues: HashMap<&str, String> = HashMap::new();
    for entry in entries.iter().filter(|entry| entry.child.is_none()) {
        if !queues.contains_key(entry.worker_type.as_str()) {
            let queue = publisher.subtask_queue(&entry.worker_type).await?;
            queues.insert(&entry.worker_type, queue);
        }
    }
    let mut messages: Vec<(&str, Vec<u8>, Option<String>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        match &entry.child {
            None => {
                let queue = queues
                    .get(entry.worker_type.as_str())
                    .map_or(topology::SUBTASKS_QUEUE, String::as_str);
                let body = protocol::encode(&SubtaskMessage {
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
                })?;
                messages.push((queue, body, None));
            }
            Some(child) => {
                let child_id = child_task_id(context.task, &entry.id);
                store.add_child(context.task, &child_id).await?;
                let body = protocol::encode(&TaskRequest {
                    kind: child.kind.clone(),
                    input: child.input.clone(),
                    id: Some(child_id.clone()),
                    options: child.options.clone(),
                    parent: Some(ParentRef {
                        task: context.task.to_owned(),
                        subtask: entry.id.clone(),
                    }),
                })?;
                messages.push((topology::TASKS_QUEUE, body, Some(child_id)));
            }
        }
    }
    publisher
        .publish_all(messages.iter().map(|(queue, body, message_id)| {
            let mut properties = amqp::persistent(protocol::MSGPACK);
            if let Some(message_id) = message_id {
                properties = properties.with_message_id(ShortString::from(message_id.as_str()));
            }
            Outgoing {
                exchange: "",
                routing_key: queue,
                body,
                properties,
                mandatory: true,
            }
        }))
        .await?;
    Ok(())
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
            exchange: "",
            routing_key: topology::RESULTS_QUEUE,
            body: &body,
            properties: amqp::persistent(protocol::MSGPACK),
            mandatory: true,
        })
        .await?;
    Ok(())
}

/// Publishes a `subtask.<status>` event on `chorus.events`. Events are for dashboards: one that
/// cannot be published is logged, never retried.
pub async fn announce(publisher: &Publisher, event: &SubtaskEvent) {
    let Ok(body) = protocol::encode(event) else {
        return;
    };
    let routing_key = format!("subtask.{}", event.status);
    let published = publisher
        .publish(Outgoing {
            exchange: topology::EVENTS_EXCHANGE,
            routing_key: &routing_key,
            body: &body,
            properties: lapin::BasicProperties::default()
                .with_content_type(ShortString::from(protocol::MSGPACK)),
            mandatory: false,
        })
        .await;
    if let Err(error) = published {
        tracing::debug!(task = %event.task, %error, "cannot publish a subtask event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_are_valid_task_ids() {
        assert_eq!(child_task_id("t", "3"), "t/3");
        let long = child_task_id(&"t".repeat(150), &"s".repeat(150));
        assert!(protocol::validate_task_id(&long).is_ok(), "{long}");
        assert_ne!(long, child_task_id(&"t".repeat(150), &"x".repeat(150)));
    }
}
