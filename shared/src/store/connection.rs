//! The Redis connection of a [`super::Store`]: one multiplexed connection, rebuilt when it
//! breaks from the URL and TLS files as they are *then*, so a rotated password or certificate
//! (a Kubernetes secret or Vault rewriting the file) takes effect at the next reconnect, as the
//! broker's do (`consume::run_sessions`). redis-rs's `ConnectionManager` reconnects with the
//! client it was built with, which keeps the first URL for good.
//!
//! A broken connection fails the command that found it, as it did under the connection
//! manager; the next command connects anew (one attempt at a time, shared by every command
//! waiting for it), and callers retry after their own pause.

use std::sync::{Arc, Mutex};

use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

use crate::{
    config::{self, ConnectArgs},
    tls::Endpoint,
};

/// Where a connection's URL and TLS files come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A server given once (tests, programs that take the URL their own way).
    Fixed(Endpoint),
    /// The settings of a service (`--redis-url` or its file, the TLS files), read again at each
    /// connection.
    Settings(ConnectArgs),
}

impl Source {
    /// The server to connect to now.
    ///
    /// # Errors
    /// A URL or TLS file cannot be read or used, as one line without the password.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, String> {
        match self {
            Self::Fixed(endpoint) => Ok(endpoint.clone()),
            Self::Settings(connect) => connect.redis(),
        }
    }
}

/// A connection attempt, awaited by every command that needs it.
type Attempt = Shared<BoxFuture<'static, RedisResult<MultiplexedConnection>>>;

struct Inner {
    source: Source,
    config: AsyncConnectionConfig,
    /// The current attempt and its number: a command that finds the connection broken replaces
    /// the attempt it used, and only that one (others may already have replaced it).
    current: Mutex<(u64, Attempt)>,
}

/// A Redis connection that reconnects from its [`Source`]; cheap to clone (one shared
/// connection).
#[derive(Clone)]
pub(crate) struct Reconnecting {
    inner: Arc<Inner>,
    db: i64,
}

impl Reconnecting {
    /// Connects to the server of `source` now, so that start-up fails on a server that cannot
    /// be used; `config` bounds every connection attempt and command.
    ///
    /// # Errors
    /// As [`open`].
    pub(crate) async fn connect(
        source: Source,
        endpoint: &Endpoint,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        let first = open(endpoint.clone(), config.clone()).await?;
        let db = first.get_db();
        let ready: Attempt = futures::future::ready(Ok(first)).boxed().shared();
        Ok(Self {
            inner: Arc::new(Inner {
                source,
                config,
                current: Mutex::new((0, ready)),
            }),
            db,
        })
    }

    /// The connection of the current attempt, with the attempt's number.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let (number, attempt) = match self.inner.current.lock() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match attempt.await {
            Ok(connection) => Ok((number, connection)),
            Err(error) => {
                self.replace(number);
                Err(error)
            }
        }
    }

    /// Starts over after attempt `number` failed or its connection broke: the next command
    /// reads the settings again and connects.
    fn replace(&self, number: u64) {
        let mut current = match self.inner.current.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 != number {
            return;
        }
        let (source, config) = (self.inner.source.clone(), self.inner.config.clone());
        let attempt = async move {
            let endpoint = source.endpoint().map_err(|message| {
                RedisError::from((ErrorKind::InvalidClientConfig, "Redis settings", message))
            })?;
            let connection = open(endpoint.clone(), config).await;
            match &connection {
                Ok(_) => {
                    crate::observe::metrics::reconnect("redis");
                    tracing::info!(redis = %endpoint.redacted(), "reconnected to Redis");
                }
                Err(error) => {
                    tracing::warn!(redis = %endpoint.redacted(), %error, "cannot reconnect to Redis; retrying at the next command");
                }
            }
            connection
        };
        *current = (number + 1, attempt.boxed().shared());
    }

    /// Replaces the attempt `number` when `result` says its connection is gone.
    fn check<T>(&self, number: u64, result: &RedisResult<T>) {
        if result
            .as_ref()
            .is_err_and(RedisError::is_unrecoverable_error)
        {
            self.replace(number);
        }
    }
}

/// A new connection to `endpoint`.
///
/// # Errors
/// The URL is invalid, the server cannot be reached, refuses the TLS handshake or the
/// credentials; the message never holds the URL's password.
async fn open(
    endpoint: Endpoint,
    config: AsyncConnectionConfig,
) -> RedisResult<MultiplexedConnection> {
    let client = endpoint
        .redis_client()
        .map_err(|error| redacted(error, &endpoint))?;
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|error| redacted(error, &endpoint))
}

/// `error` unchanged, or rebuilt with the password of `endpoint`'s URL hidden should its message
/// quote it (redis-rs's do not today; every connection error reaches a log line).
pub(super) fn redacted(error: RedisError, endpoint: &Endpoint) -> RedisError {
    let message = error.to_string();
    let hidden = config::hide_password(&message, endpoint.url());
    if hidden == message {
        error
    } else {
        RedisError::from((error.kind(), "cannot connect to Redis", hidden))
    }
}

impl ConnectionLike for Reconnecting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (number, mut connection) = self.connection().await?;
            let result = connection.req_packed_command(cmd).await;
            self.check(number, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (number, mut connection) = self.connection().await?;
            let result = connection
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.check(number, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
