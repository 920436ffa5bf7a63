//! The consume loop every service runs: reconnecting sessions, prefetch plus a concurrency
//! bound, per-message error handling (bad input → `chorus.dead`, Redis trouble → retry in
//! place, broker trouble → new session), and a bounded drain on shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
    Channel, Connection, Consumer,
};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

mod acks;

use acks::Acks;

use crate::{
    amqp::{self, DeadLetter, Publisher},
    config::ConnectArgs,
    error::{BrokerError, ProtocolError, ServiceError, StoreError},
    observe, text,
    tls::Endpoint,
    topology,
};

/// The two broker connections of a session: consuming and publishing are kept apart so that a
/// publisher blocked by a broker alarm never stops acks from flowing.
pub struct Session {
    /// Connection for consumers and acks.
    pub consume: Connection,
    /// Connection for publishes.
    pub publish: Connection,
    /// Confirm-mode channel on the publish connection.
    pub publisher: Publisher,
}

/// A session that lasted this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// First pause before reconnecting: quick, since most broker hiccups are short.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest pause between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Endless pauses between attempts: from `min`, doubling up to `max`, with jitter so that
/// processes that failed together do not all try again at once.
fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Opens a session on the first of `nodes` that accepts, from index `start` on; both
/// connections go to the same node when it takes both. Returns the session and the index of the
/// node of its consume connection.
async fn open_session(
    nodes: &[Endpoint],
    start: usize,
    name: &str,
    connect: &ConnectArgs,
) -> Result<(Session, usize), BrokerError> {
    let timeout = connect.amqp_connect_timeout();
    let consume = amqp::connect_any(nodes, start, &format!("{name} (consume)"), timeout).await?;
    let opened = async {
        let publish = amqp::connect_any(nodes, consume.node, &format!("{name} (publish)"), timeout)
            .await?
            .connection;
        let publisher = Publisher::open(&publish, connect.publish_timeout()).await?;
        Ok::<_, BrokerError>((publish, publisher))
    };
    match opened.await {
        Ok((publish, publisher)) => Ok((
            Session {
                consume: consume.connection,
                publish,
                publisher,
            },
            consume.node,
        )),
        Err(error) => {
            // Not left open beside the next attempt's connections.
            drop(
                tokio::time::timeout(
                    FAREWELL_TIMEOUT,
                    consume
                        .connection
                        .close(amqp::REPLY_SUCCESS, ShortString::from("bye")),
                )
                .await,
            );
            Err(error)
        }
    }
}

/// Longest wait for the broker to answer a close or a cancel: on a connection that just died
/// the answer never comes, and waiting for it would keep the service from reconnecting.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

async fn close_session(session: &Session) {
    // Closing may fail, or never be answered, on a dead connection; there is nothing left to
    // do about it then.
    for connection in [&session.consume, &session.publish] {
        drop(
            tokio::time::timeout(
                FAREWELL_TIMEOUT,
                connection.close(amqp::REPLY_SUCCESS, ShortString::from("bye")),
            )
            .await,
        );
    }
}

/// Runs `serve` on a fresh session until it returns `Ok` (shutdown) — reconnecting with backoff
/// whenever the broker connection fails. Each session starts from scratch: unacked messages of
/// a failed session come back from the broker and are handled again. The broker's URLs and TLS
/// files are read from `connect` for each session, so rotated files take effect.
///
/// With several nodes (a cluster), the first session tries them in the order given, and each
/// later one starts at the node after the one the last session was on: a node that was lost is
/// tried last, not first, and a dead node costs at most `--amqp-connect-timeout-ms`. Which node
/// a session is on is logged.
///
/// # Errors
/// Before any session has opened, a broker that refuses the TLS handshake or settings that
/// cannot be used: waiting would not help, so the service stops (exit 69 or 64). Later, the same
/// failures are logged and retried — over TLS again, never in plain text.
pub async fn run_sessions<F, Fut>(
    name: &str,
    connect: &ConnectArgs,
    shutdown: CancellationToken,
    mut serve: F,
) -> Result<(), BrokerError>
where
    F: FnMut(Arc<Session>) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    let mut delays = backoff(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY);
    let mut opened_once = false;
    let mut next_node = 0;
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            opened = async {
                let nodes = connect.amqp_nodes().map_err(BrokerError::Settings)?;
                let (session, node) = open_session(&nodes, next_node, name, connect).await?;
                Ok::<_, BrokerError>((session, node, nodes))
            } => opened,
        };
        match opened {
            Ok((session, node, nodes)) => {
                if opened_once {
                    observe::metrics::reconnect("rabbitmq");
                }
                opened_once = true;
                next_node = node + 1;
                tracing::info!(broker = %nodes[node].redacted(), node = node + 1, nodes = nodes.len(), "connected to RabbitMQ");
                let started = tokio::time::Instant::now();
                let session = Arc::new(session);
                let served = serve(Arc::clone(&session)).await;
                close_session(&session).await;
                // Only a session that worked for a while resets the pace: one that fails at
                // once (a refused declaration, say) must not reconnect in a tight loop.
                if started.elapsed() >= HEALTHY_SESSION {
                    delays = backoff(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY);
                }
                match served {
                    Ok(()) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(error = %error, "broker session ended; reconnecting")
                    }
                }
            }
            Err(error @ (BrokerError::TlsRefused(_) | BrokerError::Settings(_)))
                if !opened_once =>
            {
                return Err(error);
            }
            Err(error) => {
                tracing::warn!(broker = %redacted_broker(connect), error = %error, "cannot connect to RabbitMQ; retrying");
            }
        }
        let delay = delays.next().unwrap_or(RECONNECT_MAX_DELAY);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
    Ok(())
}

/// The broker's URLs for a log line, passwords hidden.
fn redacted_broker(connect: &ConnectArgs) -> String {
    connect.amqp_nodes().map_or_else(
        |_| "(unreadable settings)".to_owned(),
        |nodes| amqp::redacted_nodes(&nodes),
    )
}

/// Everything a service needs to consume its queues.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Connection name prefix, e.g. `chorus-worker`.
    pub name: &'static str,
    /// Where the broker is (URL or its file, TLS files) and the publish confirm timeout.
    pub connect: ConnectArgs,
    /// Retry delay queues are declared up to this delay.
    pub max_retry_delay: Duration,
    /// The consumers, one channel each, all in the same session.
    pub consumers: Vec<ConsumeConfig>,
}

impl ServiceSpec {
    /// The spec of a service consuming `queue` with `concurrency` handlers (also the prefetch).
    pub fn new(
        name: &'static str,
        connect: &ConnectArgs,
        queue: &str,
        concurrency: u16,
        grace: Duration,
        max_retry_delay: Duration,
    ) -> Self {
        Self::without_consumers(name, connect, max_retry_delay).consuming(ConsumeConfig {
            queue: queue.to_owned(),
            prefetch: concurrency,
            concurrency: usize::from(concurrency),
            grace,
            worker_type: None,
        })
    }

    /// The spec of a service with no consumer yet; add them with [`ServiceSpec::consuming`].
    pub fn without_consumers(
        name: &'static str,
        connect: &ConnectArgs,
        max_retry_delay: Duration,
    ) -> Self {
        Self {
            name,
            connect: connect.clone(),
            max_retry_delay,
            consumers: Vec::new(),
        }
    }

    /// Adds a consumer.
    #[must_use]
    pub fn consuming(mut self, consumer: ConsumeConfig) -> Self {
        self.consumers.push(consumer);
        self
    }
}

/// Runs a service: sessions that declare the topology and consume every queue of
/// `spec.consumers` with the handler `make_handler` builds for it (given the session and the
/// queue name), until `shutdown`. When one consumer fails the whole session is rebuilt.
///
/// # Errors
/// As [`run_sessions`]: the broker refused the first session's TLS handshake, or the settings
/// cannot be used.
pub async fn serve<M, H, Fut>(
    spec: ServiceSpec,
    shutdown: CancellationToken,
    make_handler: M,
) -> Result<(), BrokerError>
where
    M: Fn(&Session, &str) -> H,
    H: Fn(Arc<Delivery>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Disposition, ServiceError>> + Send + 'static,
{
    let sessions_shutdown = shutdown.clone();
    observe::health::expect_consumers(spec.consumers.len());
    run_sessions(
        spec.name,
        &spec.connect.clone(),
        sessions_shutdown,
        |session| {
            let handlers: Vec<H> = spec
                .consumers
                .iter()
                .map(|consumer| make_handler(&session, &consumer.queue))
                .collect();
            let (spec, shutdown) = (spec.clone(), shutdown.clone());
            async move {
                let worker_types: Vec<&str> = spec
                    .consumers
                    .iter()
                    .filter_map(|consumer| consumer.worker_type.as_deref())
                    .collect();
                topology::declare_if_permitted(
                    &session.publish,
                    spec.max_retry_delay,
                    &worker_types,
                )
                .await?;
                // One consumer failing ends the others too, so the session is rebuilt whole.
                let stop = shutdown.child_token();
                let consumers = spec
                    .consumers
                    .iter()
                    .zip(handlers)
                    .map(|(config, handler)| {
                        let (session, stop) = (&session, stop.clone());
                        async move {
                            let result = consume(session, config, &stop, handler).await;
                            if result.is_err() {
                                stop.cancel();
                            }
                            result
                        }
                    });
                let results = futures::future::join_all(consumers).await;
                results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
            }
        },
    )
    .await
}

/// How one consumer runs.
#[derive(Clone, Debug)]
pub struct ConsumeConfig {
    /// Queue to consume.
    pub queue: String,
    /// `basic_qos` prefetch: deliveries the broker may hand over unacked.
    pub prefetch: u16,
    /// Deliveries handled at once (a permit per running handler).
    pub concurrency: usize,
    /// Time given to handlers in progress at shutdown.
    pub grace: Duration,
    /// The worker type whose subtask queue this is, declared before consuming it.
    pub worker_type: Option<String>,
}

/// What a handler tells the loop once it is done with a delivery.
#[derive(Debug)]
pub enum Disposition {
    /// Handled: ack it.
    Ack,
    /// The message is bad: dead-letter it to `chorus.dead`, then ack it.
    Reject {
        /// Why the message is bad: the dead letter's reason header.
        error: ProtocolError,
        /// The task the message belongs to, when it could be read: logged and put on the dead
        /// letter so an operator can find the task.
        task: Option<String>,
        /// The subtask the message carries, when it could be read (logged and put on the dead
        /// letter likewise).
        subtask: Option<String>,
    },
}

/// Rejects a message before it is decoded if it is over the size limit.
///
/// # Errors
/// [`ProtocolError::TooLarge`].
pub fn check_size(delivery: &Delivery, limit: usize) -> Result<(), ProtocolError> {
    if delivery.data.len() > limit {
        Err(ProtocolError::TooLarge {
            size: delivery.data.len(),
            limit,
        })
    } else {
        Ok(())
    }
}

/// Earlier deliveries of this message, as counted by the (quorum) queue.
pub fn earlier_deliveries(delivery: &Delivery) -> u64 {
    amqp::header_u64(&delivery.properties, topology::DELIVERY_COUNT_HEADER).unwrap_or(0)
}

/// Whether the broker delivered this message before (its flag, or the quorum queue's count).
pub fn is_redelivery(delivery: &Delivery) -> bool {
    delivery.redelivered || earlier_deliveries(delivery) > 0
}

/// First pause before handling a message again while Redis is failing.
const STORE_RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to handle a message while Redis is failing.
const STORE_RETRY_MAX_DELAY: Duration = Duration::from_secs(3);

/// Consumes `config.queue` on a new channel of `session`, running `handler` for each delivery
/// under the concurrency bound, until `shutdown` (returns `Ok`) or a broker failure (returns the
/// error, so the caller starts a new session).
///
/// # Errors
/// The broker side failed; the session must be rebuilt.
pub async fn consume<H, Fut>(
    session: &Session,
    config: &ConsumeConfig,
    shutdown: &CancellationToken,
    handler: H,
) -> Result<(), ServiceError>
where
    H: Fn(Arc<Delivery>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Disposition, ServiceError>> + Send + 'static,
{
    let (channel, mut consumer) = open_consumer(session, config).await?;
    let _ready = observe::health::consumer_up();
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Cancelled when the grace period is over: what still runs is dropped, not left running
    // beside the next session (its messages come back from the broker).
    let abandon = CancellationToken::new();
    let mut intake = Intake {
        session,
        shutdown,
        broken: CancellationToken::new(),
        failure: Arc::new(Mutex::new(None)),
        watchdog: tokio::time::interval(SESSION_CHECK_INTERVAL),
    };
    let closing = CancellationToken::new();
    let (acks, acking) = Acks::start(config.prefetch, closing.clone(), {
        let broken = intake.broken.clone();
        let failure = Arc::clone(&intake.failure);
        move |error| {
            // Held only to record a failure: one that is being recorded says the same.
            if let Ok(mut slot) = failure.try_lock() {
                slot.get_or_insert(ServiceError::Broker(error));
            }
            broken.cancel();
        }
    });
    let acks = Arc::new(acks);
    while let Some(permit) = intake.permit(&permits).await {
        let Some(delivery) = intake.delivery(&mut consumer).await else {
            break;
        };
        acks.taken(delivery.delivery_tag);
        let job = Job {
            publisher: session.publisher.clone(),
            queue: config.queue.clone(),
            shutdown: shutdown.clone(),
            broken: intake.broken.clone(),
            failure: Arc::clone(&intake.failure),
            acks: Arc::clone(&acks),
        };
        let handler = handler.clone();
        let abandon = abandon.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = abandon.cancelled() => {}
                () = job.run(delivery, handler) => {}
            }
            drop(permit);
        });
    }
    drain(&channel, consumer.tag(), &tracker, config).await;
    abandon.cancel();
    // The acks of the jobs that finished leave before the channel closes.
    drop(acks);
    closing.cancel();
    let mut acking = acking;
    if tokio::time::timeout(FAREWELL_TIMEOUT, &mut acking)
        .await
        .is_err()
    {
        acking.abort();
    }
    // Closed here, answered, before the session closes its connection: a channel left to its
    // drop asks for its close after the connection's, which lapin logs as a connection ERROR.
    drop(
        tokio::time::timeout(
            FAREWELL_TIMEOUT,
            channel.close(amqp::REPLY_SUCCESS, ShortString::from("bye")),
        )
        .await,
    );
    let failed = intake.failure.lock().await.take();
    match failed {
        Some(error) if !shutdown.is_cancelled() => Err(error),
        _ => Ok(()),
    }
}

/// How often a consumer checks that both connections of its session are still up.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Session {
    /// Whether both connections are still up.
    fn is_alive(&self) -> bool {
        self.consume.status().connected() && self.publish.status().connected()
    }
}

/// Opens the channel of one consumer with its prefetch and starts consuming `config.queue`.
async fn open_consumer(
    session: &Session,
    config: &ConsumeConfig,
) -> Result<(Channel, Consumer), ServiceError> {
    let channel: Channel = session.consume.create_channel().await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ShortString::from(config.queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.queue, prefetch = config.prefetch, concurrency = config.concurrency, "consuming");
    Ok((channel, consumer))
}

/// The taking side of [`consume`]: a permit, then a delivery, until something says stop.
struct Intake<'a> {
    session: &'a Session,
    shutdown: &'a CancellationToken,
    /// Cancelled by a job whose broker side failed: no more deliveries are taken.
    broken: CancellationToken,
    /// Why the session must be rebuilt, once something found out.
    failure: Arc<Mutex<Option<ServiceError>>>,
    /// A consumer stream is not always told when its connection dies; the session is checked
    /// directly too, so a dead broker connection always ends the session.
    watchdog: tokio::time::Interval,
}

impl Intake<'_> {
    /// A handler permit, or `None` when consuming must stop (shutdown, a broken job, or a dead
    /// connection, which is recorded as the failure).
    async fn permit(&mut self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            () = self.broken.cancelled() => None,
            _ = self.watchdog.tick(), if !self.session.is_alive() => {
                *self.failure.lock().await = Some(ServiceError::Broker(BrokerError::ConnectionLost));
                None
            }
            permit = Arc::clone(permits).acquire_owned() => permit.ok(),
        }
    }

    /// The next delivery, or `None` when consuming must stop (shutdown, a broken job, or a
    /// broker failure, which is recorded as the failure).
    async fn delivery(&mut self, consumer: &mut Consumer) -> Option<Arc<Delivery>> {
        let next = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = self.broken.cancelled() => return None,
                _ = self.watchdog.tick() => {
                    if self.session.is_alive() {
                        continue;
                    }
                    *self.failure.lock().await = Some(ServiceError::Broker(BrokerError::ConnectionLost));
                    return None;
                }
                next = consumer.next() => break next,
            }
        };
        let error = match next {
            Some(Ok(delivery)) => return Some(Arc::new(delivery)),
            Some(Err(error)) => error.into(),
            None => ServiceError::Broker(BrokerError::Timeout(
                "consumer (cancelled by the broker)",
                0,
            )),
        };
        *self.failure.lock().await = Some(error);
        None
    }
}

/// Stops new deliveries first, then gives the running handlers their grace period.
async fn drain(channel: &Channel, tag: ShortString, tracker: &TaskTracker, config: &ConsumeConfig) {
    drop(
        tokio::time::timeout(
            FAREWELL_TIMEOUT,
            channel.basic_cancel(tag, BasicCancelOptions::default()),
        )
        .await,
    );
    tracker.close();
    if tokio::time::timeout(config.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            queue = %config.queue,
            grace_secs = config.grace.as_secs(),
            "grace period over with work in progress; it returns to the queue"
        );
    }
}

struct Job {
    publisher: Publisher,
    queue: String,
    shutdown: CancellationToken,
    broken: CancellationToken,
    failure: Arc<Mutex<Option<ServiceError>>>,
    acks: Arc<Acks>,
}

impl Job {
    async fn run<H, Fut>(self, delivery: Arc<Delivery>, handler: H)
    where
        H: Fn(Arc<Delivery>) -> Fut,
        Fut: Future<Output = Result<Disposition, ServiceError>>,
    {
        let mut delays = backoff(STORE_RETRY_MIN_DELAY, STORE_RETRY_MAX_DELAY);
        loop {
            let outcome = match handler(Arc::clone(&delivery)).await {
                Ok(disposition) => self.settle(&delivery, disposition).await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => return,
                Err(ServiceError::Store(error)) if error.is_transient() => {
                    if self.shutdown.is_cancelled() || self.broken.is_cancelled() {
                        return;
                    }
                    tracing::warn!(queue = %self.queue, error = %error, "Redis failed; retrying this message");
                    tokio::time::sleep(delays.next().unwrap_or(STORE_RETRY_MAX_DELAY)).await;
                }
                Err(ServiceError::ShuttingDown) => return,
                Err(ServiceError::Store(StoreError::Fenced(reason))) => {
                    // Another process took the work over under its own lease; its message
                    // stays unacked until it is done, so this copy is not needed.
                    tracing::info!(queue = %self.queue, %reason, "work taken over elsewhere; acking this copy");
                    return self.conclude(&delivery, Disposition::Ack).await;
                }
                Err(ServiceError::Store(error)) => {
                    let reason = ProtocolError::Invalid(format!("cannot be handled: {error}"));
                    let reject = Disposition::Reject {
                        error: reason,
                        task: None,
                        subtask: None,
                    };
                    return self.conclude(&delivery, reject).await;
                }
                Err(ServiceError::Protocol(error)) => {
                    // A handler that surfaces a protocol error unhandled means the message is bad.
                    let reject = Disposition::Reject {
                        error,
                        task: None,
                        subtask: None,
                    };
                    return self.conclude(&delivery, reject).await;
                }
                Err(error) => {
                    self.fail(error).await;
                    return;
                }
            }
        }
    }

    /// Settles the delivery; a failure to do so ends the session.
    async fn conclude(&self, delivery: &Arc<Delivery>, disposition: Disposition) {
        if let Err(error) = self.settle(delivery, disposition).await {
            self.fail(error).await;
        }
    }

    async fn fail(&self, error: ServiceError) {
        let mut slot = self.failure.lock().await;
        if slot.is_none() {
            *slot = Some(error);
        }
        self.broken.cancel();
    }

    /// Dead-letters the delivery first when it is rejected, then hands it to the channel's
    /// acks ([`Acks`]), which send it shortly with others.
    async fn settle(
        &self,
        delivery: &Arc<Delivery>,
        disposition: Disposition,
    ) -> Result<(), ServiceError> {
        if let Disposition::Reject {
            error,
            task,
            subtask,
        } = disposition
        {
            // What the message carried is escaped and bounded before it reaches the log.
            let reason = text::reason(&error.to_string());
            let name = |name: Option<&str>| text::bounded(name.unwrap_or(""), text::MAX_NAME_BYTES);
            tracing::warn!(
                queue = %self.queue,
                task = %name(task.as_deref()),
                subtask = %name(subtask.as_deref()),
                reason = %reason,
                "message dead-lettered to chorus.dead"
            );
            amqp::dead_letter(
                &self.publisher,
                &delivery.data,
                &delivery.properties,
                DeadLetter {
                    source_queue: &self.queue,
                    reason: &reason,
                    task: task.as_deref(),
                    subtask: subtask.as_deref(),
                },
            )
            .await?;
        }
        self.acks.settled(Arc::clone(delivery))?;
        Ok(())
    }
}
