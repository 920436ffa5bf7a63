//! Error types of each layer, and the one question every consumer asks of them: retry or give up?

use thiserror::Error;

/// A message that cannot be understood. Never retried: the message is dead-lettered.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The body is not valid in its encoding, or lacks or mistypes a field.
    #[error("cannot decode body: {0}")]
    Decode(String),
    /// A value could not be encoded (a bug, or a kind's output serde cannot represent).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The `content_type` property names an encoding Chorus does not speak.
    #[error("unsupported content_type {0:?}; use application/msgpack or application/json")]
    UnsupportedContentType(String),
    /// The body is larger than the configured limit.
    #[error("body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Body size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The message decodes but breaks a rule of the protocol.
    #[error("{0}")]
    Invalid(String),
}

/// A server's TLS handshake failed: its certificate does not verify against the configured
/// roots, or it refused ours. Never retried in plain text; at start-up it ends a service with
/// [`crate::config::EXIT_UNAVAILABLE`].
#[derive(Debug, Error)]
#[error("{service} at {host} refused: TLS handshake failed: {reason}")]
pub struct TlsRefused {
    /// `RabbitMQ` or `Redis`.
    pub service: &'static str,
    /// `host:port` of the server (no credentials).
    pub host: String,
    /// rustls's reason, e.g. `invalid peer certificate: UnknownIssuer`.
    pub reason: String,
}

/// A failure talking to RabbitMQ.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The broker's TLS handshake failed.
    #[error(transparent)]
    TlsRefused(#[from] TlsRefused),
    /// The connection settings cannot be used (a TLS or URL file went missing since start-up).
    #[error("{0}")]
    Settings(String),
    /// Anything lapin reports: connection, channel or protocol errors.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker cannot be reached or refused the connection, in lapin's words with the URL's
    /// password hidden.
    #[error("AMQP: {0}")]
    Unavailable(String),
    /// The broker refused a publish (negative confirm).
    #[error("broker refused the publish to {0:?} (negative confirm)")]
    Nacked(String),
    /// A mandatory publish had no queue to go to.
    #[error("no queue is bound for {0:?}; is the consuming service running?")]
    Unroutable(String),
    /// No confirm or reply came in time.
    #[error("{0} timed out after {1} ms")]
    Timeout(&'static str, u64),
    /// An ack went to a channel that is gone; the broker will redeliver the message.
    #[error("ack was not delivered: its channel is closed")]
    AckLost,
    /// A connection of the session is no longer open.
    #[error("connection to the broker lost")]
    ConnectionLost,
    /// A publish this message was part of, with others (results sent together), failed.
    #[error("{0}")]
    Shared(String),
}

/// A failure talking to Redis.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Redis's TLS handshake failed.
    #[error(transparent)]
    TlsRefused(#[from] TlsRefused),
    /// The connection settings cannot be used (a TLS or URL file went missing since start-up).
    #[error("{0}")]
    Settings(String),
    /// Anything redis-rs reports, timeouts included.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis holds something Chorus did not write (or wrote with another version).
    #[error("unexpected data in Redis: {0}")]
    Corrupt(String),
    /// A write under a lease was refused: the lease lapsed and another process took it over.
    #[error("{0}")]
    Fenced(String),
}

impl StoreError {
    /// Whether trying again later may succeed (Redis unreachable or slow), as opposed to data
    /// that will not change by waiting.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Redis(_))
    }
}

/// Why a service stopped handling one message.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The broker side failed; the session is rebuilt and unacked messages come back.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Redis failed; the message is retried in place after a pause.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message is bad; it is dead-lettered.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The service is stopping before the message's work started: it is left unacked, so the
    /// broker gives it to another consumer when this one's channel closes.
    #[error("shutting down before the work started")]
    ShuttingDown,
}

impl From<lapin::Error> for ServiceError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

impl From<redis::RedisError> for ServiceError {
    fn from(error: redis::RedisError) -> Self {
        Self::Store(StoreError::Redis(error))
    }
}
