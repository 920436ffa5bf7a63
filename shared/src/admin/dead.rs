//! The dead letters in `chorus.dead`: list them with their queue of origin, reason, time and
//! size, show one, requeue some to the queue they came from, purge the queue.
//!
//! A message in a queue has no address, so each is named by a **key**: the first 12 hex digits
//! of the SHA-256 of its body and headers (stable while it stays dead; two identical letters
//! share it, and either is the one meant). Reading is RabbitMQ's safe way for a queue that must
//! lose nothing: `basic.get` without ack on a channel of its own, then closing the channel, which
//! returns every message it got to the queue — nothing is removed except what is acked, and an
//! ack comes only once the requeued copy is publisher-confirmed. The cost: each look takes the
//! messages read out of the queue for its duration (another reader does not see them meanwhile),
//! and on the quorum queue `chorus.dead` each return counts a delivery (`x-delivery-count`;
//! `chorus.dead` has no delivery limit, so nothing is dropped for it). A look reads at most
//! `limit` letters from the head.

use std::collections::BTreeMap;

use lapin::{
    options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties, Channel, Connection,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    amqp::{self, Outgoing, Publisher},
    error::BrokerError,
    text, topology,
};

#[cfg(test)]
mod tests;

/// Headers Chorus or the broker add when dead-lettering, removed from a requeued message.
const DEAD_LETTER_HEADERS: [&str; 9] = [
    topology::REASON_HEADER,
    topology::SOURCE_QUEUE_HEADER,
    topology::TASK_HEADER,
    topology::SUBTASK_HEADER,
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    DELIVERY_COUNT,
];

/// The header in which a quorum queue counts a message's deliveries.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// One dead letter as listed.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The key naming it (12 hex digits of the SHA-256 of body and headers).
    pub key: String,
    /// The queue it was consumed from: `x-chorus-queue`, or the broker's `x-death`.
    pub queue: Option<String>,
    /// Why: `x-chorus-reason`, or the broker's reason (`delivery_limit`, `rejected`, ...).
    pub reason: Option<String>,
    /// Its task and subtask, when Chorus knew them.
    pub task: Option<String>,
    /// Subtask id.
    pub subtask: Option<String>,
    /// When it died (the broker's `x-death` time) or was first published (the `timestamp`
    /// property), seconds since the Unix epoch, when known.
    pub time_s: Option<u64>,
    /// Body size, bytes.
    pub size: usize,
    /// The body's content type.
    pub content_type: Option<String>,
    /// Every header, as text (for `show`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// What a requeue did with one key.
#[derive(Clone, Debug, Serialize)]
pub struct Requeued {
    /// The key asked for.
    pub key: String,
    /// The queue it went back to, once confirmed there and removed from `chorus.dead`.
    pub queue: Option<String>,
    /// Why not, otherwise.
    pub error: Option<String>,
}

/// A header's value as text: strings as they are, the rest in Rust's debug form.
fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

/// The first `x-death` entry's field `name`.
fn first_death<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    first.inner().get(name)
}

/// The key of a message: 12 hex digits of SHA-256 over its body and headers (sorted), less
/// `x-delivery-count`, which the quorum queue raises each time a look gives the message back.
pub fn key_of(body: &[u8], headers: &FieldTable) -> String {
    let mut hash = Sha256::new();
    hash.update(body);
    for (name, value) in headers.inner() {
        if name.as_str() == DELIVERY_COUNT {
            continue;
        }
        hash.update(name.as_str().as_bytes());
        hash.update(format!("{value:?}").as_bytes());
    }
    hash.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `body` and `properties` of a dead letter as listed (`with_headers`: every header too).
pub fn describe(body: &[u8], properties: &BasicProperties, with_headers: bool) -> DeadLetter {
    let headers = properties.headers().clone().unwrap_or_default();
    let get = |name: &str| headers.inner().get(name).map(header_text);
    let queue = get(topology::SOURCE_QUEUE_HEADER)
        .or_else(|| first_death(&headers, "queue").map(header_text));
    let reason =
        get(topology::REASON_HEADER).or_else(|| first_death(&headers, "reason").map(header_text));
    let time_s = match first_death(&headers, "time") {
        Some(AMQPValue::Timestamp(t)) => Some(*t),
        _ => *properties.timestamp(),
    };
    DeadLetter {
        key: key_of(body, &headers),
        queue: queue.map(|q| text::bounded(&q, text::MAX_NAME_BYTES)),
        reason: reason.map(|r| text::reason(&r)),
        task: get(topology::TASK_HEADER),
        subtask: get(topology::SUBTASK_HEADER),
        time_s,
        size: body.len(),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned()),
        headers: if with_headers {
            headers
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), text::reason(&header_text(v))))
                .collect()
        } else {
            BTreeMap::new()
        },
    }
}

/// `properties` without the dead-letter headers, for a requeued copy.
pub fn without_dead_letter_headers(properties: &BasicProperties) -> BasicProperties {
    let headers = properties.headers().clone().unwrap_or_default();
    let kept: BTreeMap<ShortString, AMQPValue> = headers
        .inner()
        .iter()
        .filter(|(name, _)| {
            !DEAD_LETTER_HEADERS.contains(&name.as_str())
                && !name.as_str().starts_with("x-last-death-")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    properties.clone().with_headers(FieldTable::from(kept))
}

/// A look at `chorus.dead`: a channel of its own holding what it read, unacked.
struct Look {
    channel: Channel,
}

impl Look {
    async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        Ok(Self {
            channel: connection.create_channel().await?,
        })
    }

    /// The next message from the head of `chorus.dead`, unacked; `None` when it has no more.
    async fn next(&self) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
        self.next_of(topology::DEAD_QUEUE).await
    }

    /// The next message from the head of `queue`, unacked; `None` when it has no more.
    async fn next_of(
        &self,
        queue: &str,
    ) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
        Ok(self
            .channel
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
            .await?)
    }

    /// Closes the channel: every message read and not acked goes back to the queue.
    async fn close(self) {
        drop(
            self.channel
                .close(amqp::REPLY_SUCCESS, ShortString::from("done"))
                .await,
        );
    }
}

/// Up to `limit` dead letters from the head of `chorus.dead`, none removed.
///
/// # Errors
/// The broker failed, or the user may not read `chorus.dead`.
pub async fn list(connection: &Connection, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
    let look = Look::open(connection).await?;
    let mut found = Vec::new();
    while found.len() < limit {
        let Some(message) = look.next().await? else {
            break;
        };
        found.push(describe(
            &message.delivery.data,
            &message.delivery.properties,
            false,
        ));
    }
    look.close().await;
    Ok(found)
}

/// Calls `visit` with each of the first `limit` dead letters (as listed, and its body and
/// properties), none removed: for readers that need the body, such as the sweeper
/// (`crate::sweep`), without holding every body at once.
///
/// # Errors
/// As [`list`].
pub async fn visit(
    connection: &Connection,
    limit: usize,
    visit: impl FnMut(&DeadLetter, &[u8], &BasicProperties),
) -> Result<usize, BrokerError> {
    peek(connection, topology::DEAD_QUEUE, limit, visit).await
}

/// [`visit`] for any `queue`: the first `limit` messages from its head, read the same safe
/// way (unacked on a channel of their own, all given back when it closes); returns how many
/// were read. On a queue with a delivery limit each look counts a delivery: for queues without
/// one (`chorus.dead`, the delay queues).
///
/// # Errors
/// The broker failed, the queue does not exist, or the user may not read it.
pub async fn peek(
    connection: &Connection,
    queue: &str,
    limit: usize,
    mut visit: impl FnMut(&DeadLetter, &[u8], &BasicProperties),
) -> Result<usize, BrokerError> {
    let look = Look::open(connection).await?;
    let mut read = 0;
    while read < limit {
        let message = match look.next_of(queue).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(error) => {
                look.close().await;
                return Err(error);
            }
        };
        read += 1;
        let delivery = &message.delivery;
        let letter = describe(&delivery.data, &delivery.properties, false);
        visit(&letter, &delivery.data, &delivery.properties);
    }
    look.close().await;
    Ok(read)
}

/// The dead letter of `key` among the first `limit`, with its headers and body; none removed.
///
/// # Errors
/// As [`list`].
pub async fn show(
    connection: &Connection,
    key: &str,
    limit: usize,
) -> Result<Option<(DeadLetter, Vec<u8>)>, BrokerError> {
    let look = Look::open(connection).await?;
    let mut shown = None;
    for _ in 0..limit {
        let Some(message) = look.next().await? else {
            break;
        };
        let letter = describe(&message.delivery.data, &message.delivery.properties, true);
        if letter.key == key {
            shown = Some((letter, message.delivery.data.clone()));
            break;
        }
    }
    look.close().await;
    Ok(shown)
}

/// Sends the dead letters of `keys` (among the first `limit`) back to the queue each came from,
/// without the dead-letter headers, through the default exchange with a confirm; only then acks
/// (removes) it from `chorus.dead`. A key not found, or a letter without a queue of origin or
/// whose queue is gone, stays and is reported.
///
/// # Errors
/// The broker failed (what was confirmed before stays requeued and removed).
pub async fn requeue(
    connection: &Connection,
    publisher: &Publisher,
    keys: &[String],
    limit: usize,
) -> Result<Vec<Requeued>, BrokerError> {
    let look = Look::open(connection).await?;
    let mut outcome: BTreeMap<&str, Requeued> = keys
        .iter()
        .map(|k| {
            (
                k.as_str(),
                Requeued {
                    key: k.clone(),
                    queue: None,
                    error: Some(format!("not among the first {limit} dead letters")),
                },
            )
        })
        .collect();
    let mut left = keys.len();
    for _ in 0..limit {
        if left == 0 {
            break;
        }
        let Some(message) = look.next().await? else {
            break;
        };
        let delivery = &message.delivery;
        let letter = describe(&delivery.data, &delivery.properties, false);
        let Some(entry) = outcome.get_mut(letter.key.as_str()) else {
            continue;
        };
        if entry.queue.is_some() {
            continue;
        }
        left -= 1;
        let Some(queue) = letter.queue.clone() else {
            entry.error = Some("no queue of origin in its headers".into());
            continue;
        };
        let sent = publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &queue,
                body: &delivery.data,
                properties: without_dead_letter_headers(&delivery.properties),
                mandatory: true,
            })
            .await;
        match sent {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                entry.queue = Some(queue);
                entry.error = None;
            }
            Err(BrokerError::Unroutable(_)) => {
                entry.error = Some(format!("queue {} does not exist", text::quoted(&queue)));
            }
            Err(other) => {
                look.close().await;
                return Err(other);
            }
        }
    }
    look.close().await;
    Ok(keys
        .iter()
        .filter_map(|k| outcome.remove(k.as_str()))
        .collect())
}

/// Removes every message of `chorus.dead`; returns how many.
///
/// # Errors
/// The broker failed, or the user may not purge the queue.
pub async fn purge(connection: &Connection) -> Result<u32, BrokerError> {
    let channel = connection.create_channel().await?;
    let purged = channel
        .queue_purge(
            ShortString::from(topology::DEAD_QUEUE),
            QueuePurgeOptions::default(),
        )
        .await?;
    drop(
        channel
            .close(amqp::REPLY_SUCCESS, ShortString::from("done"))
            .await,
    );
    Ok(purged)
}
