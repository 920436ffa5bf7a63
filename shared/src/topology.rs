//! Exchanges and queues: their names, types and arguments, declared the same way by every binary.
//!
//! Work queues (`chorus.tasks`, `chorus.subtasks` and one `chorus.subtasks.<type>` per worker
//! type, `chorus.results`, `chorus.control`) and `chorus.dead` are quorum queues: replicated when
//! the broker is a cluster, and with `x-delivery-limit` so a message that keeps crashing its
//! consumer ends in `chorus.dead` instead of looping.
//!
//! Delays (retry backoff, deadline timers) go through the headers exchange `chorus.delay` into
//! quorum bucket queues `chorus.wait.<ms>`, picked by the `chorus-delay-bucket` header.
//! Their messages expire (per-message TTL) into the direct exchange `chorus.retry` with their
//! original routing key — the queue they are for — so one set of buckets serves every worker
//! type. The buckets dead-letter **at-least-once**: the broker keeps an expired message until
//! the queue it moves to has confirmed it, so a broker crash mid-move cannot drop a retry or a
//! deadline timer (classic queues, used before, move at-most-once and did drop them).
//!
//! Results and dead letters go through the direct exchange `chorus.outputs`, so a worker's
//! broker user needs no write permission on the default exchange (docs/security.md).
//! Submitters publish tasks and cancels through the direct exchange `chorus.submit`, which
//! reaches `chorus.tasks` and `chorus.control` only, so a submitter's user needs no write on the
//! default exchange either (which reaches `chorus.results` and every `chorus.subtasks*`).

use std::time::Duration;

use lapin::{
    options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Channel, Connection, Consumer, ExchangeKind,
};

use crate::error::BrokerError;

/// Prefix of every exchange and queue name of Chorus: no submitter may name such a queue as
/// its reply queue ([`crate::amqp::is_chorus_queue`]).
pub const NAME_PREFIX: &str = "chorus.";
/// Queue that submitters publish tasks to, through [`SUBMIT_EXCHANGE`] (or, with the rights,
/// the default exchange).
pub const TASKS_QUEUE: &str = "chorus.tasks";
/// Queue of subtasks of the default worker type waiting for a worker; other types have
/// `chorus.subtasks.<type>` (see [`subtask_queue`]).
pub const SUBTASKS_QUEUE: &str = "chorus.subtasks";
/// Queue of control messages (cancellations, deadline timers), consumed by the synthesizer.
pub const CONTROL_QUEUE: &str = "chorus.control";
/// Headers exchange routing delayed messages to their bucket queue.
pub const DELAY_EXCHANGE: &str = "chorus.delay";
/// Direct exchange that expired delayed messages return through, by their routing key.
pub const RETRY_EXCHANGE: &str = "chorus.retry";
/// Header naming the delay bucket of a delayed message. Not `x-` prefixed: headers exchanges
/// ignore such headers when matching. Earlier versions' classic buckets `chorus.delayed.<ms>`
/// are bound by a `chorus-delay` header instead, which keeps them out of today's routing while
/// they drain.
pub const DELAY_HEADER: &str = "chorus-delay-bucket";
/// Queue of settled subtasks waiting for the synthesizer.
pub const RESULTS_QUEUE: &str = "chorus.results";
/// Dead-letter queue: every message Chorus gives up on, with a reason header.
pub const DEAD_QUEUE: &str = "chorus.dead";
/// Topic exchange announcing outcomes as `task.<status>`.
pub const EVENTS_EXCHANGE: &str = "chorus.events";
/// Direct exchange that results and dead letters are published to, bound to `chorus.results`
/// and `chorus.dead` by their names. A worker publishes nothing else to a queue directly, so
/// its broker user needs no write permission on the default exchange (`amq.default`), which
/// reaches every queue, `chorus.tasks` and `chorus.control` included (docs/security.md).
pub const OUTPUTS_EXCHANGE: &str = "chorus.outputs";
/// Direct exchange of submitters, bound to `chorus.tasks` and `chorus.control` by their names
/// (so a client publishes with the same routing keys as through the default exchange). Write on
/// it is the right to submit and cancel; it reaches no other queue, so a submitter needs no
/// write on the default exchange, from which it could forge results and subtasks
/// (docs/security.md#trust-model).
pub const SUBMIT_EXCHANGE: &str = "chorus.submit";
/// Prefix of the delay bucket queues; the suffix is the bucket's upper bound in milliseconds.
pub const DELAY_QUEUE_PREFIX: &str = "chorus.wait.";
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
/// Header of a first-attempt subtask message: when (ms since the Unix epoch) its publisher,
/// which had just found the task unfinished, published it. A worker that gets it within a
/// second takes the task as live without asking Redis.
pub const LIVE_AT_HEADER: &str = "x-chorus-live-at-ms";
/// Header counting how many times a service lacking a message's kind (or having another
/// definition of it) left the message for another (`crate::services::defer`).
pub const DEFERRALS_HEADER: &str = "x-chorus-deferrals";
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

/// A delay bucket: a quorum queue whose expired messages move to `chorus.retry` at-least-once,
/// which RabbitMQ only does for queues that refuse publishes when full rather than drop their
/// head (they have no length limit, so they never are).
fn delay_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), short("quorum"));
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        short(RETRY_EXCHANGE),
    );
    args.insert(
        ShortString::from("x-dead-letter-strategy"),
        short("at-least-once"),
    );
    args.insert(ShortString::from("x-overflow"), short("reject-publish"));
    args
}

/// Properties that take a message published to [`DELAY_EXCHANGE`] (its routing key naming the
/// queue it is for) through the delay bucket of `delay`.
pub fn delayed(properties: BasicProperties, delay: Duration) -> BasicProperties {
    let bucket = delay_bucket_for(delay);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(DELAY_HEADER), short(&bucket.to_string()));
    properties
        .with_headers(headers)
        .with_expiration(ShortString::from(delay.as_millis().to_string()))
}

/// Queue of the subtasks of `worker_type`.
pub fn subtask_queue(worker_type: &str) -> String {
    if worker_type == crate::protocol::DEFAULT_WORKER_TYPE {
        SUBTASKS_QUEUE.to_owned()
    } else {
        format!("{SUBTASKS_QUEUE}.{worker_type}")
    }
}

/// The bucket (its upper bound in ms) that holds `delay`: the smallest `base·2^k` not below it.
pub fn delay_bucket_for(delay: Duration) -> u64 {
    let wanted = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let mut bucket = DELAY_BUCKET_BASE_MS;
    while bucket < wanted && bucket < u64::MAX / 2 {
        bucket *= 2;
    }
    bucket
}

/// Name of the delay queue whose bucket holds `delay`.
pub fn delay_queue_for(delay: Duration) -> String {
    format!("{DELAY_QUEUE_PREFIX}{}", delay_bucket_for(delay))
}

/// Every delay bucket needed for delays up to `max_delay`: queue names and bounds in ms.
pub fn delay_queues_up_to(max_delay: Duration) -> Vec<(String, u64)> {
    let last = delay_bucket_for(max_delay.max(Duration::from_millis(MIN_DELAY_COVERAGE_MS)));
    let mut buckets = Vec::new();
    let mut bucket = DELAY_BUCKET_BASE_MS;
    loop {
        buckets.push((format!("{DELAY_QUEUE_PREFIX}{bucket}"), bucket));
        if bucket >= last || bucket >= u64::MAX / 2 {
            return buckets;
        }
        bucket *= 2;
    }
}

/// Buckets always cover at least this delay, so deadline timers hop at most once a minute
/// whatever the retry settings.
pub const MIN_DELAY_COVERAGE_MS: u64 = 60_000;

/// The `max_retry_delay` of a process that schedules no retries of its own (the client, the
/// synthesizer): it declares only the delay queues every process needs, up to
/// [`MIN_DELAY_COVERAGE_MS`].
pub const NO_RETRY_DELAY: Duration = Duration::from_millis(DELAY_BUCKET_BASE_MS);

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), BrokerError> {
    channel
        .queue_declare(ShortString::from(name), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(|error| {
            if is_access_refused(&error) {
                return BrokerError::Amqp(error);
            }
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
    for (name, kind) in [
        (DELAY_EXCHANGE, ExchangeKind::Headers),
        (RETRY_EXCHANGE, ExchangeKind::Direct),
        (OUTPUTS_EXCHANGE, ExchangeKind::Direct),
        (SUBMIT_EXCHANGE, ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(
                ShortString::from(name),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let mut dead_args = FieldTable::default();
    dead_args.insert(ShortString::from("x-queue-type"), short("quorum"));
    declare_queue(channel, DEAD_QUEUE, dead_args).await?;
    for queue in [TASKS_QUEUE, RESULTS_QUEUE] {
        declare_queue(channel, queue, work_queue_arguments()).await?;
    }
    for queue in [RESULTS_QUEUE, DEAD_QUEUE] {
        bind_by_name(channel, queue, OUTPUTS_EXCHANGE).await?;
    }
    for queue in [SUBTASKS_QUEUE, CONTROL_QUEUE] {
        declare_returning_queue(channel, queue).await?;
    }
    for queue in [TASKS_QUEUE, CONTROL_QUEUE] {
        bind_by_name(channel, queue, SUBMIT_EXCHANGE).await?;
    }
    for (queue, bucket) in delay_queues_up_to(max_retry_delay) {
        declare_queue(channel, &queue, delay_queue_arguments()).await?;
        let mut binding = FieldTable::default();
        binding.insert(ShortString::from("x-match"), short("all"));
        binding.insert(ShortString::from(DELAY_HEADER), short(&bucket.to_string()));
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(DELAY_EXCHANGE),
                ShortString::from(""),
                QueueBindOptions::default(),
                binding,
            )
            .await?;
    }
    Ok(())
}

/// Declares the topology ([`declare`], and the subtask queues of `worker_types`) on a channel
/// of its own, or, when the broker refuses this user the rights to (`ACCESS_REFUSED`: a
/// least-privileged user such as a worker's, docs/security.md), says so in one log line and
/// goes on with the topology as a service that may declare it left it. A consumer of a queue
/// not declared yet then fails its session, which is rebuilt after a pause.
///
/// # Errors
/// The broker refuses a declaration for another reason (a queue exists with other arguments),
/// or the connection fails.
pub async fn declare_if_permitted(
    connection: &Connection,
    max_retry_delay: Duration,
    worker_types: &[&str],
) -> Result<(), BrokerError> {
    // A refused declaration closes its channel: never the one the caller publishes on.
    let channel = connection.create_channel().await?;
    let declared = async {
        declare(&channel, max_retry_delay).await?;
        for worker_type in worker_types {
            declare_subtask_queue(&channel, worker_type).await?;
        }
        Ok::<_, BrokerError>(())
    }
    .await;
    match declared {
        Ok(()) => {
            drop(channel.close(200, ShortString::from("declared")).await);
            Ok(())
        }
        Err(BrokerError::Amqp(error)) if is_access_refused(&error) => {
            tracing::info!(
                %error,
                "this broker user may not declare Chorus's exchanges and queues: using them as a service that may has declared them (docs/security.md)"
            );
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Whether the broker refused an operation for want of permission (AMQP reply code 403).
fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == ACCESS_REFUSED)
}

/// AMQP reply code `access-refused`.
const ACCESS_REFUSED: u16 = 403;

/// Declares a work queue that delayed messages come back to, bound to `chorus.retry` by its
/// own name.
async fn declare_returning_queue(channel: &Channel, queue: &str) -> Result<(), BrokerError> {
    declare_queue(channel, queue, work_queue_arguments()).await?;
    bind_by_name(channel, queue, RETRY_EXCHANGE).await
}

/// Binds `queue` to the direct `exchange` with its own name as the routing key.
async fn bind_by_name(channel: &Channel, queue: &str, exchange: &str) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(queue),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the subtask queue of `worker_type` (idempotent) and returns its name.
///
/// # Errors
/// The broker refuses the declaration.
pub async fn declare_subtask_queue(
    channel: &Channel,
    worker_type: &str,
) -> Result<String, BrokerError> {
    let queue = subtask_queue(worker_type);
    declare_returning_queue(channel, &queue).await?;
    Ok(queue)
}

/// Declares an exclusive, server-named queue that goes with its connection (a submitter's
/// replies, the dashboard's events) and consumes it without acks: what lands there is only
/// ever read once, by its one consumer. Returns the queue's name and the consumer.
///
/// # Errors
/// The broker refuses the declaration or the consumer.
pub async fn private_queue(channel: &Channel) -> Result<(String, Consumer), lapin::Error> {
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().as_str().to_owned(), consumer))
}

#[cfg(test)]
mod tests;
