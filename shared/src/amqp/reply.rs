//! Replies to submitters: where a request wants its outcome (its `reply_to` and
//! `correlation_id` properties) and the message that carries the outcome there, in the
//! submitter's encoding.

use lapin::BasicProperties;

use super::{persistent, property_str, short_id, Outgoing, Publisher};
use crate::{
    error::ServiceError,
    protocol::{self, Encoding, Outcome, ReplyTarget},
};

/// Whether `queue` is one of Chorus's own (`chorus.` and anything after it: the names of
/// [`crate::topology`]), which no submitter may name as its reply queue.
pub fn is_chorus_queue(queue: &str) -> bool {
    queue.starts_with(crate::topology::NAME_PREFIX)
}

/// Reply target of a request, from its `reply_to` and `correlation_id` properties; the
/// correlation id defaults to `task_id`, and the outcome goes out in `encoding` (the request's).
/// `None` when the request has no `reply_to` (nobody waits for a reply), or when it names one
/// of Chorus's own queues ([`is_chorus_queue`]): replies go through the default exchange, which
/// reaches every queue, so a submitter could otherwise have a service publish into
/// `chorus.results` or `chorus.tasks` on its behalf.
pub fn reply_target(
    properties: &BasicProperties,
    task_id: &str,
    encoding: Encoding,
) -> Option<ReplyTarget> {
    let reply_to = property_str(properties.reply_to()).filter(|name| !is_chorus_queue(name))?;
    let correlation_id = property_str(properties.correlation_id()).unwrap_or(task_id);
    Some(ReplyTarget {
        reply_to: reply_to.to_owned(),
        correlation_id: correlation_id.to_owned(),
        encoding,
    })
}

/// The outcome in the waiter's encoding — or in MessagePack (`msgpack`, already encoded) when
/// JSON cannot carry it (a kind's output with non-string map keys, say): the waiter still gets
/// its outcome, with a `content_type` saying how to read it. Returns the encoding used and the
/// body.
pub(crate) fn encode_reply(
    waiter: &ReplyTarget,
    outcome: &Outcome,
    msgpack: &[u8],
) -> (Encoding, Vec<u8>) {
    match waiter.encoding {
        Encoding::Msgpack => (Encoding::Msgpack, msgpack.to_vec()),
        Encoding::Json => match Encoding::Json.encode(outcome) {
            Ok(body) => (Encoding::Json, body),
            Err(error) => {
                tracing::warn!(task = %outcome.id, %error, "outcome has no JSON form; sending it as MessagePack");
                (Encoding::Msgpack, msgpack.to_vec())
            }
        },
    }
}

/// The message carrying `body` (in `encoding`) to `waiter`: persistent, through the default
/// exchange to its `reply_to` queue, with its `correlation_id`; not mandatory, since a
/// submitter that went away must not fail the task.
pub(crate) fn reply_message<'a>(
    waiter: &'a ReplyTarget,
    encoding: Encoding,
    body: &'a [u8],
) -> Outgoing<'a> {
    Outgoing {
        exchange: "",
        routing_key: &waiter.reply_to,
        body,
        properties: persistent(encoding.content_type())
            .with_correlation_id(short_id(&waiter.correlation_id)),
        mandatory: false,
    }
}

/// Publishes `outcome` to one waiter.
///
/// # Errors
/// The outcome cannot be encoded, or the broker failed.
pub(crate) async fn publish_reply(
    publisher: &Publisher,
    waiter: &ReplyTarget,
    outcome: &Outcome,
) -> Result<(), ServiceError> {
    let msgpack = protocol::encode(outcome)?;
    let (encoding, body) = encode_reply(waiter, outcome, &msgpack);
    publisher
        .publish(reply_message(waiter, encoding, &body))
        .await?;
    Ok(())
}

/// Publishes a `rejected` outcome for task `id` (with `reason` as its one error) straight to a
/// submitter, for a request that is not a task at all (it is not stored: its id, if any,
/// cannot be trusted).
///
/// # Errors
/// The broker failed.
pub async fn reply_rejected(
    publisher: &Publisher,
    waiter: &ReplyTarget,
    id: &str,
    reason: &str,
) -> Result<(), ServiceError> {
    publish_reply(publisher, waiter, &Outcome::rejected(id, reason)).await
}
