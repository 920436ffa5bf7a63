//! Exchanges and queues: their names, types and arguments, declared the same way by every binary.
//!
//! Work queues (`chorus.tasks`, `chorus.subtasks`, `chorus.results`) and `chorus.dead` are quorum
//! queues: replicated when the broker is a cluster, and with `x-delivery-limit` so a message that
//! keeps crashing its consumer ends in `chorus.dead` instead of looping. Retry queues are durable
//! classic queues whose messages expire (per-message TTL) back into `chorus.subtasks`: RabbitMQ
//! 3.10 does not reliably restart quorum queues declared shortly before a node restart, and one
//! such retry queue would strand every retry in it (docs/reliability.md).

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    Channel, ExchangeKind,
};

use crate::error::BrokerError;

/// Queue that submitters publish tasks to, through the default exchange.
pub const TASKS_QUEUE: &str = "chorus.tasks";
/// Queue of subtasks waiting for a worker.
pub const SUBTASKS_QUEUE: &str = "chorus.subtasks";
/// Queue of settled subtasks waiting for the synthesizer.
pub const RESULTS_QUEUE: &str = "chorus.results";
/// Dead-letter queue: every message Chorus gives up on, with a reason header.
pub const DEAD_QUEUE: &str = "chorus.dead";
/// Topic exchange announcing outcomes as `task.<status>`.
pub const EVENTS_EXCHANGE: &str = "chorus.events";
/// Prefix of the retry queues; the suffix is the bucket's upper bound in milliseconds.
pub const DELAY_QUEUE_PREFIX: &str = "chorus.retry.";
/// Shortest retry delay bucket; each next bucket doubles it.
pub const DELAY_BUCKET_BASE_MS: u64 = 100;

/// Deliveries after which the broker itself dead-letters a message (a backstop: consumers give
/// up earlier, with a reason, at their own `--max-deliveries`).
pub const BROKER_DELIVERY_LIMIT: i64 = 20;

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-chorus-reason";
/// Header naming the queue a dead-lettered message came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-chorus-queue";
/// Header naming the task of a dead-lettered message, when known.
pub const TASK_HEADER: &str = "x-chorus-task";
/// Header naming the subtask of a dead-lettered message, when known.
pub const SUBTASK_HEADER: &str = "x-chorus-subtask";
/// Header quorum queues set to the number of earlier deliveries of a message.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

fn short(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn work_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), short("quorum"));
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT),
    );
    args.insert(ShortString::from("x-dead-letter-exchange"), short(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        short(DEAD_QUEUE),
    );
    args
}

/// Name of the delay queue whose bucket holds `delay`: the smallest `base·2^k` not below it.
pub fn delay_queue_for(delay: Duration) -> String {
    let wanted = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let mut bucket = DELAY_BUCKET_BASE_MS;
    while bucket < wanted && bucket < u64::MAX / 2 {
        bucket *= 2;
    }
    format!("{DELAY_QUEUE_PREFIX}{bucket}")
}

/// Every delay bucket needed for delays up to `max_delay`.
pub fn delay_queues_up_to(max_delay: Duration) -> Vec<String> {
    let last = delay_queue_for(max_delay);
    let mut names = Vec::new();
    let mut bucket = DELAY_BUCKET_BASE_MS;
    loop {
        let name = format!("{DELAY_QUEUE_PREFIX}{bucket}");
        let done = name == last;
        names.push(name);
        if done || bucket >= u64::MAX / 2 {
            return names;
        }
        bucket *= 2;
    }
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), BrokerError> {
    channel
        .queue_declare(ShortString::from(name), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(|error| {
            tracing::error!(
                queue = name,
                %error,
                "cannot declare queue; if it exists with other arguments (e.g. as a classic queue), delete it once so Chorus can declare it"
            );
            BrokerError::Amqp(error)
        })
}

/// Declares the exchanges and queues every service uses, plus the retry delay queues for
/// delays up to `max_retry_delay`. Idempotent; safe to run from any number of processes.
///
/// # Errors
/// The broker refuses a declaration, typically because a queue exists with other arguments.
pub async fn declare(channel: &Channel, max_retry_delay: Duration) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            ShortString::from(EVENTS_EXCHANGE),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut dead_args = FieldTable::default();
    dead_args.insert(ShortString::from("x-queue-type"), short("quorum"));
    declare_queue(channel, DEAD_QUEUE, dead_args).await?;
    for queue in [TASKS_QUEUE, SUBTASKS_QUEUE, RESULTS_QUEUE] {
        declare_queue(channel, queue, work_queue_arguments()).await?;
    }
    for queue in delay_queues_up_to(max_retry_delay) {
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-queue-type"), short("classic"));
        args.insert(ShortString::from("x-dead-letter-exchange"), short(""));
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            short(SUBTASKS_QUEUE),
        );
        declare_queue(channel, &queue, args).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_map_to_the_smallest_covering_bucket() {
        assert_eq!(
            delay_queue_for(Duration::from_millis(0)),
            "chorus.retry.100"
        );
        assert_eq!(
            delay_queue_for(Duration::from_millis(100)),
            "chorus.retry.100"
        );
        assert_eq!(
            delay_queue_for(Duration::from_millis(101)),
            "chorus.retry.200"
        );
        assert_eq!(
            delay_queue_for(Duration::from_millis(1500)),
            "chorus.retry.1600"
        );
    }

    #[test]
    fn declared_buckets_cover_the_maximum_delay() {
        let names = delay_queues_up_to(Duration::from_secs(60));
        assert_eq!(names.first().map(String::as_str), Some("chorus.retry.100"));
        assert_eq!(
            names.last().map(String::as_str),
            Some("chorus.retry.102400")
        );
        assert_eq!(names.len(), 11);
    }
}
