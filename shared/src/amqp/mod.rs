//! RabbitMQ plumbing: connections, confirmed publishing with time limits, acks that report
//! loss, header access, dead-lettering with a reason, and replies to submitters
//! ([`reply_target`], [`reply_rejected`]).
//!
//! # Layout
//! - `mod.rs`: connections, the [`Publisher`], acks, headers, dead letters.
//! - `reply.rs`: where a submitter wants its outcome, and the reply messages sent there.
//! - `nodes.rs`: the nodes of a cluster, connecting to whichever answers ([`connect_any`]).
//! - `queues.rs`: what a queue holds ([`queue_counts`]).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::try_join_all;
use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    tcp::{AMQPUriTcpExt, TLSConfig},
    types::{AMQPValue, LongString, ShortString},
    uri::{AMQPScheme, AMQPUri},
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};

use crate::{
    config,
    error::{BrokerError, TlsRefused},
    text,
    tls::{self, Endpoint},
    topology,
};

mod nodes;
mod queues;
mod reply;

pub use nodes::{attempt_order, connect_any, redacted_nodes, NodeConnection};
pub use queues::{queue_counts, QueueCounts};
pub(crate) use reply::{encode_reply, publish_reply, reply_message};
pub use reply::{is_chorus_queue, reply_rejected, reply_target};

/// AMQP delivery mode of messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;

/// AMQP reply code of a normal close (`reply-success` in the AMQP 0-9-1 spec).
pub const REPLY_SUCCESS: u16 = 200;

/// Longest AMQP short string (`message_id`, `correlation_id`, ...), in bytes: its length is
/// one octet (AMQP 0-9-1, section 4.2.5.3).
const SHORT_STRING_MAX_BYTES: usize = 255;

/// Opens a connection to the broker at `endpoint` named after the service (the name shows in the
/// broker's connection list), over TLS for an `amqps://` URL with the roots and client
/// certificate of [`Endpoint::amqp_tls`] (so a CA file replaces the system's roots, as for Redis).
///
/// # Errors
/// [`BrokerError::TlsRefused`] when the TLS handshake fails (the broker's certificate does not
/// verify, or it refuses ours); [`BrokerError::Settings`] when the URL or the TLS files cannot
/// be used; [`BrokerError::Amqp`] when the broker cannot be reached or refuses the credentials.
/// No message holds the URL's password.
pub async fn connect(endpoint: &Endpoint, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    let settings = |message: String| {
        BrokerError::Settings(format!(
            "--amqp-url {}: {}",
            endpoint.redacted(),
            config::hide_password(&message, endpoint.url())
        ))
    };
    let mut uri: AMQPUri = endpoint.url().parse().map_err(settings)?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = endpoint.heartbeat_s();
    }
    let tls = match uri.scheme {
        AMQPScheme::AMQPS => Some(endpoint.amqp_tls().map_err(settings)?),
        AMQPScheme::AMQP => None,
    };
    let runtime = lapin::runtime::default_runtime()?;
    // lapin's own TLS would add a CA file to the system's roots: the TCP connection is lapin's,
    // the TLS over it ours. lapin calls this again when it reconnects by itself.
    let open = async move |uri: AMQPUri, runtime| {
        let plain = AMQPUri {
            scheme: AMQPScheme::AMQP,
            ..uri.clone()
        };
        let stream = plain
            .connect_with_config_async(TLSConfig::default(), &runtime)
            .await?;
        match &tls {
            Some(connector) => Ok(stream.into_rustls(connector, &uri.authority.host).await?),
            None => Ok(stream),
        }
    };
    Connection::connector(uri, runtime, open, properties)
        .await
        .map_err(|error| match tls::refusal(&error) {
            Some(reason) => BrokerError::TlsRefused(TlsRefused {
                service: "RabbitMQ",
                host: endpoint.host().to_owned(),
                reason,
            }),
            None => redacted(error, endpoint),
        })
}

/// `error` as [`BrokerError::Amqp`], or, should its message quote the URL's password (lapin's
/// never did when this was written), as [`BrokerError::Unavailable`] with the password hidden:
/// every connection error reaches a log line.
fn redacted(error: lapin::Error, endpoint: &Endpoint) -> BrokerError {
    let message = error.to_string();
    let hidden = config::hide_password(&message, endpoint.url());
    if hidden == message {
        BrokerError::Amqp(error)
    } else {
        BrokerError::Unavailable(hidden)
    }
}

/// Properties of a persistent message in the given content type.
pub fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(ShortString::from(content_type))
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Exchange; empty for the default exchange.
    pub exchange: &'a str,
    /// Routing key (the queue name on the default exchange).
    pub routing_key: &'a str,
    /// Body.
    pub body: &'a [u8],
    /// Properties and headers.
    pub properties: BasicProperties,
    /// Fail with [`BrokerError::Unroutable`] when no queue takes the message.
    pub mandatory: bool,
}

/// A channel in confirm mode: every publish returns only once the broker has taken
/// responsibility for the message, or fails.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    timeout: Duration,
    /// Worker types whose subtask queue this channel has declared.
    declared: Arc<Mutex<HashSet<String>>>,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    ///
    /// # Errors
    /// The channel cannot be opened or put in confirm mode.
    pub async fn open(connection: &Connection, timeout: Duration) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            timeout,
            declared: Arc::default(),
        })
    }

    /// The subtask queue of `worker_type`, declared on first use by this publisher (so
    /// subtasks for a type no worker has started yet wait in their queue, not nowhere).
    ///
    /// # Errors
    /// The broker refuses the declaration.
    pub async fn subtask_queue(&self, worker_type: &str) -> Result<String, BrokerError> {
        let known = self
            .declared
            .lock()
            .map(|declared| declared.contains(worker_type))
            .unwrap_or(false);
        if known {
            return Ok(topology::subtask_queue(worker_type));
        }
        let queue = topology::declare_subtask_queue(&self.channel, worker_type).await?;
        if let Ok(mut declared) = self.declared.lock() {
            declared.insert(worker_type.to_owned());
        }
        Ok(queue)
    }

    /// The underlying channel, e.g. to declare the topology.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Queues `message` on the channel; the broker's confirm of it.
    async fn queue(&self, message: Outgoing<'_>) -> Result<PublisherConfirm, BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(message.exchange),
                ShortString::from(message.routing_key),
                BasicPublishOptions {
                    mandatory: message.mandatory,
                    ..Default::default()
                },
                message.body,
                message.properties,
            )
            .await?;
        Ok(confirm)
    }

    /// What the broker's `confirm` of a message to `routing_key` means: taken, returned as
    /// unroutable (a mandatory message), or refused.
    async fn confirmed(confirm: PublisherConfirm, routing_key: &str) -> Result<(), BrokerError> {
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key.to_owned())),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(routing_key.to_owned())),
        }
    }

    async fn send(&self, message: Outgoing<'_>) -> Result<(), BrokerError> {
        let routing_key = message.routing_key.to_owned();
        let confirm = self.queue(message).await?;
        Self::confirmed(confirm, &routing_key).await
    }

    /// Publishes one message and waits for the broker's confirm.
    ///
    /// # Errors
    /// A negative confirm, an unroutable mandatory message, a dead channel, or no confirm
    /// within the publish timeout.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), BrokerError> {
        tokio::time::timeout(self.timeout, self.send(message))
            .await
            .map_err(|_| BrokerError::Timeout("publish confirm", self.timeout_ms()))?
    }

    /// Publishes one message and returns once it is queued on the channel, leaving its confirm
    /// to a task of its own (within the publish timeout; a failure is logged at debug level,
    /// naming `what`). For announcements whose loss is harmless and which must not hold up the
    /// work they describe (events): waiting for each confirm would add a broker round trip to
    /// every step that announces itself. Messages published this way from one task keep their
    /// order, since each is queued before this returns (AMQP 0-9-1: a channel delivers in
    /// publish order).
    ///
    /// # Errors
    /// The message could not be queued (a dead channel).
    pub async fn publish_unawaited(
        &self,
        message: Outgoing<'_>,
        what: &'static str,
    ) -> Result<(), BrokerError> {
        let routing_key = message.routing_key.to_owned();
        let confirm = self.queue(message).await?;
        let timeout = self.timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, Self::confirmed(confirm, &routing_key)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, what, "broker did not take a message"),
                Err(_) => tracing::debug!(what, "no confirm for a message in time"),
            }
        });
        Ok(())
    }

    /// Publishes many messages with their confirms pipelined, and waits for all of them.
    ///
    /// # Errors
    /// As [`Publisher::publish`], for the first message that fails; others may have been
    /// published, so callers only use this for messages whose repetition is harmless.
    pub async fn publish_all<'a>(
        &self,
        messages: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> Result<(), BrokerError> {
        let sends = messages.into_iter().map(|message| self.send(message));
        tokio::time::timeout(self.timeout, try_join_all(sends))
            .await
            .map_err(|_| BrokerError::Timeout("publish confirms", self.timeout_ms()))?
            .map(|_| ())
    }
}

/// A header's value as text, when it is a string.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// A header's value as an integer, whatever integer width the publisher chose.
pub fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

/// A short-string property (`reply_to`, `correlation_id`, ...) as `&str`.
pub fn property_str(value: &Option<ShortString>) -> Option<&str> {
    value
        .as_ref()
        .map(ShortString::as_str)
        .filter(|s| !s.is_empty())
}

/// `id` as a short-string property, cut to [`SHORT_STRING_MAX_BYTES`] at a character boundary
/// (task ids are at most 200 bytes; a third party's correlation id came in a short string, so
/// this never cuts in practice).
pub(crate) fn short_id(id: &str) -> ShortString {
    let mut end = id.len().min(SHORT_STRING_MAX_BYTES);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&id[..end])
}

/// The properties of `original` worth keeping on a dead-lettered copy: not `expiration` (the
/// copy must stay) nor `user_id` (the broker refuses one that is not the publisher's own).
fn copy_for_dead_letter(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    copy
}

/// What is known about a message being dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Queue the message was consumed from.
    pub source_queue: &'a str,
    /// Why Chorus gives up on it, for the operator.
    pub reason: &'a str,
    /// Its task, when known.
    pub task: Option<&'a str>,
    /// Its subtask, when known.
    pub subtask: Option<&'a str>,
}

/// Publishes a copy of a message to `chorus.dead`, with its original body and properties and
/// headers naming the reason and origin. Expiration is dropped so the copy stays.
///
/// # Errors
/// The copy could not be published and confirmed; the caller must then not ack the original.
pub async fn dead_letter(
    publisher: &Publisher,
    body: &[u8],
    original: &BasicProperties,
    letter: DeadLetter<'_>,
) -> Result<(), BrokerError> {
    let mut headers = original.headers().clone().unwrap_or_default();
    let value = |value: String| AMQPValue::LongString(LongString::from(value.into_bytes()));
    // The reason and ids may carry the message's own text: escaped and bounded, so that a
    // header stays readable and small whatever was sent.
    let name = |name: &str| value(text::bounded(name, text::MAX_NAME_BYTES));
    headers.insert(
        ShortString::from(topology::REASON_HEADER),
        value(text::reason(letter.reason)),
    );
    headers.insert(
        ShortString::from(topology::SOURCE_QUEUE_HEADER),
        value(letter.source_queue.to_owned()),
    );
    if let Some(task) = letter.task {
        headers.insert(ShortString::from(topology::TASK_HEADER), name(task));
    }
    if let Some(subtask) = letter.subtask {
        headers.insert(ShortString::from(topology::SUBTASK_HEADER), name(subtask));
    }
    let properties = copy_for_dead_letter(original).with_headers(headers);
    crate::observe::metrics::dead_letter(letter.source_queue, letter.reason);
    publisher
        .publish(Outgoing {
            exchange: topology::OUTPUTS_EXCHANGE,
            routing_key: topology::DEAD_QUEUE,
            body,
            properties,
            mandatory: false,
        })
        .await
}

#[cfg(test)]
mod tests;
