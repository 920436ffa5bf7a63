//! Unit tests of the repair's reading of dead letters; the repair itself runs against a real
//! RabbitMQ and Redis in `tests/tests/sweep.rs`.

#![allow(clippy::unwrap_used)]

use lapin::{types::ShortString, BasicProperties};
use serde_bytes::ByteBuf;

use super::{failure_reason, subtasks_of};
use crate::{
    admin::dead::describe,
    protocol::{self, BatchItem, SubtaskBatch},
    topology,
};

fn batch() -> SubtaskBatch {
    SubtaskBatch {
        task: "t".into(),
        kind: "k".into(),
        max_attempts: 3,
        timeout_ms: 1000,
        worker_type: "default".into(),
        depth: 0,
        deadline_at_ms: None,
        events: false,
        round: 1,
        max_tokens: None,
        fingerprint: None,
        items: ["a", "b"]
            .into_iter()
            .map(|id| BatchItem {
                subtask: id.into(),
                payload: ByteBuf::new(),
                depends_on: Vec::new(),
            })
            .collect(),
    }
}

fn with_queue(queue: &str) -> BasicProperties {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        ShortString::from(topology::SOURCE_QUEUE_HEADER),
        lapin::types::AMQPValue::LongString(queue.into()),
    );
    BasicProperties::default().with_headers(headers)
}

#[test]
fn a_dead_batch_from_a_subtask_queue_yields_each_subtask() {
    let body = protocol::encode(&batch()).unwrap();
    let properties = with_queue("chorus.subtasks.gpu")
        .with_type(ShortString::from(protocol::SUBTASK_BATCH_TYPE));
    let letter = describe(&body, &properties, false);
    let ids: Vec<String> = subtasks_of(&letter, &body, &properties)
        .into_iter()
        .map(|m| m.subtask)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn a_letter_from_another_queue_or_not_a_subtask_yields_nothing() {
    let body = protocol::encode(&batch().into_subtasks()[0]).unwrap();
    let from_tasks = with_queue(topology::TASKS_QUEUE);
    assert!(subtasks_of(&describe(&body, &from_tasks, false), &body, &from_tasks).is_empty());
    let from_subtasks = with_queue(topology::SUBTASKS_QUEUE);
    let letter = describe(&body, &from_subtasks, false);
    assert_eq!(subtasks_of(&letter, &body, &from_subtasks).len(), 1);
    assert!(subtasks_of(&letter, b"not msgpack", &from_subtasks).is_empty());
}

#[test]
fn the_reason_says_who_gave_up() {
    assert!(failure_reason(Some("delivery_limit")).contains("delivery limit"));
    assert_eq!(failure_reason(Some("rejected")), "dead-lettered (rejected)");
    assert_eq!(failure_reason(None), "dead-lettered");
}
