//! Client side: submitting tasks, waiting for outcomes on a private reply queue, and reading a
//! task's state from Redis. The `chorus` CLI is a thin layer over this.

use std::collections::HashMap;

use futures::StreamExt;
use lapin::{types::ShortString, Connection, Consumer};
use serde::Serialize;

use crate::{
    amqp::{self, Outgoing, Publisher},
    config::ConnectArgs,
    error::{BrokerError, ProtocolError, StoreError},
    protocol::{self, Control, Outcome, Status, TaskRequest},
    services,
    store::{Store, TaskState, TypeProgress},
    topology,
};

/// A connection to both services, for submitting and watching tasks.
pub struct Client {
    connection: Connection,
    publisher: Publisher,
    store: Store,
}

/// A private, exclusive queue on which outcomes arrive.
pub struct ReplyQueue {
    /// Server-generated name, to put in `reply_to`.
    pub name: String,
    consumer: Consumer,
}

impl ReplyQueue {
    /// The next outcome published to this queue, decoded from MessagePack or JSON.
    ///
    /// # Errors
    /// The connection failed, the consumer was cancelled, or the message does not decode.
    pub async fn next_outcome(&mut self) -> Result<Outcome, ClientError> {
        let delivery = self
            .consumer
            .next()
            .await
            .ok_or(ClientError::Broker(BrokerError::Timeout(
                "reply consumer (cancelled)",
                0,
            )))?
            .map_err(BrokerError::from)?;
        let encoding = protocol::Encoding::from_content_type(amqp::property_str(
            delivery.properties.content_type(),
        ))?;
        Ok(encoding.decode_lenient(&delivery.data)?)
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// RabbitMQ failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Connecting failed: names the server and the address tried (password hidden), so a
    /// wrong port or host shows in the message itself.
    #[error("cannot connect to {service} at {address}: {reason}")]
    Connect {
        /// `RabbitMQ` or `Redis`.
        service: &'static str,
        /// The URL tried, password replaced by `***`.
        address: String,
        /// What failed (password hidden).
        reason: String,
    },
}

impl ClientError {
    /// `error`, met connecting to `service` at `endpoint`, as [`ClientError::Connect`] (the
    /// password of the endpoint's URL hidden from its message too).
    pub fn connecting(
        service: &'static str,
        endpoint: &crate::tls::Endpoint,
        error: impl std::fmt::Display,
    ) -> Self {
        Self::Connect {
            service,
            address: endpoint.redacted(),
            reason: crate::config::hide_password(&error.to_string(), endpoint.url()),
        }
    }

    /// As [`ClientError::connecting`], for a service with several nodes (a RabbitMQ cluster):
    /// the address lists them all, and no node's password shows.
    pub fn connecting_any(
        service: &'static str,
        nodes: &[crate::tls::Endpoint],
        error: impl std::fmt::Display,
    ) -> Self {
        let reason = nodes.iter().fold(error.to_string(), |reason, node| {
            crate::config::hide_password(&reason, node.url())
        });
        Self::Connect {
            service,
            address: amqp::redacted_nodes(nodes),
            reason,
        }
    }
}

impl From<lapin::Error> for ClientError {
    fn from(error: lapin::Error) -> Self {
        Self::Broker(BrokerError::Amqp(error))
    }
}

/// What `chorus status` shows about a task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// `planning`, `planned`, `running` or `finished`.
    pub state: &'static str,
    /// Kind name.
    pub kind: String,
    /// Subtasks in the plan.
    pub subtasks: u64,
    /// Subtasks published and confirmed.
    pub published: u64,
    /// Subtasks settled so far (succeeded + failed + skipped).
    pub settled: u64,
    /// Settled as succeeded.
    pub succeeded: u64,
    /// Settled as failed.
    pub failed: u64,
    /// Settled as skipped (a dependency failed).
    pub skipped: u64,
    /// Released to workers and not settled: queued or running.
    pub running: u64,
    /// Not released yet: waiting for dependencies or a slot under the cap.
    pub pending: u64,
    /// Retries so far.
    pub retries: u64,
    /// Review round, 1 for the first.
    pub round: u32,
    /// Progress per worker type, with what the broker says of its queue.
    pub types: Vec<TypeStatus>,
    /// Results received again for an already settled subtask (each one a duplicate execution or
    /// a redelivery); they change nothing.
    pub duplicate_results: u64,
    /// Final status, once finished.
    pub status: Option<Status>,
    /// Tokens per model recorded so far (docs/protocol.md#outcomes, `stats.tokens`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tokens: std::collections::BTreeMap<String, crate::usage::TokenStats>,
    /// Sum of the recorded costs so far, when a step reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl TaskStatus {
    /// The tokens and cost so far in one short line (`writer 1200+340 tokens in 3 calls ·
    /// cost 0.0012`), or `None` when no step reported usage.
    pub fn usage_line(&self) -> Option<String> {
        if self.tokens.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self
            .tokens
            .iter()
            .map(|(model, t)| {
                format!(
                    "{model} {}+{} tokens in {} call(s){}",
                    t.prompt,
                    t.completion,
                    t.calls,
                    if t.cache_hits > 0 {
                        format!(" ({} cached)", t.cache_hits)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        if let Some(cost) = self.cost {
            parts.push(format!("cost {cost}"));
        }
        Some(parts.join(" · "))
    }
}

/// Progress of one worker type within a task.
#[derive(Clone, Debug, Serialize)]
pub struct TypeStatus {
    /// Counters from Redis.
    #[serde(flatten)]
    pub progress: TypeProgress,
    /// Queue of the type.
    pub queue: String,
    /// Messages ready in the queue (all tasks), when the broker could be asked.
    pub queued: Option<u32>,
    /// Consumers of the queue (worker processes serving the type).
    pub consumers: Option<u32>,
    /// Handler slots of the live workers serving the type (their announcements), when they
    /// say: what can run at once, for every task of the type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
    /// A warning for a human, e.g. that no worker serves the type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TypeStatus {
    /// Subtasks of this task running, as a lower bound: in flight minus every message ready in
    /// the type's queue (which may be other tasks') is what the workers hold, and of that at
    /// most their handler slots run (a worker prefetches more than its slots by default; the
    /// rest wait in it for a slot). 0 when the broker could not be asked.
    pub fn running(&self) -> u64 {
        let in_flight = self.progress.in_flight();
        let held = self
            .queued
            .map_or(0, |ready| in_flight.saturating_sub(u64::from(ready)));
        self.slots.map_or(held, |slots| held.min(slots))
    }

    /// Released and not settled, and not counted in [`TypeStatus::running`]: waiting in the
    /// queue, as far as one can tell.
    pub fn queued_here(&self) -> u64 {
        self.progress.in_flight() - self.running()
    }
}

/// What came of asking to cancel a task ([`Client::cancel_if_live`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelRequest {
    /// The cancellation was sent: the task was known and not finished.
    Requested,
    /// Redis knows no such task (not claimed yet, never submitted, or its record expired): the
    /// cancellation was sent all the same, and a synthesizer keeps it for its outcome TTL, so
    /// that the task's claim ends it `cancelled` if it comes (docs/protocol.md, "Cancelling").
    NotKnownYet,
    /// The task had already finished, with this status when its outcome is stored: nothing
    /// was sent.
    Finished(Option<Status>),
}

impl Client {
    /// Connects to RabbitMQ and Redis (URLs or their files, TLS files) and makes sure the
    /// queues exist.
    ///
    /// # Errors
    /// Either service is unreachable or refuses the TLS handshake, or a file cannot be read.
    pub async fn connect(args: &ConnectArgs) -> Result<Self, ClientError> {
        let redis = args.redis().map_err(StoreError::Settings)?;
        let store = Store::connect_settings(args).await.map_err(|e| match e {
            // Already names the server, and tests and docs quote it as it is.
            StoreError::TlsRefused(_) | StoreError::Settings(_) => ClientError::Store(e),
            other => ClientError::connecting("Redis", &redis, other),
        })?;
        let nodes = args.amqp_nodes().map_err(BrokerError::Settings)?;
        let connection = amqp::connect_any(&nodes, 0, "chorus client", args.amqp_connect_timeout())
            .await
            .map_err(|e| match e {
                BrokerError::TlsRefused(_) | BrokerError::Settings(_) => ClientError::Broker(e),
                other => ClientError::connecting_any("RabbitMQ", &nodes, other),
            })?
            .connection;
        let publisher = Publisher::open(&connection, args.publish_timeout()).await?;
        topology::declare_if_permitted(&connection, topology::NO_RETRY_DELAY, &[]).await?;
        Ok(Self {
            connection,
            publisher,
            store,
        })
    }

    /// Declares an exclusive, server-named queue and consumes it.
    ///
    /// # Errors
    /// The broker failed.
    pub async fn reply_queue(&self) -> Result<ReplyQueue, ClientError> {
        let channel = self.connection.create_channel().await?;
        let (name, consumer) = topology::private_queue(&channel).await?;
        Ok(ReplyQueue { name, consumer })
    }

    /// Publishes a task request (MessagePack) to `chorus.tasks` through `chorus.submit`, with a
    /// confirm. The request
    /// must carry its id; it also goes in `message_id` and `correlation_id`.
    ///
    /// # Errors
    /// The request has no id, its id or kind is not valid (`protocol::validate_task_id`,
    /// `protocol::validate_kind`), or the broker did not confirm.
    pub async fn submit(
        &self,
        request: &TaskRequest,
        reply_to: Option<&str>,
    ) -> Result<(), ClientError> {
        let id = request
            .id
            .as_deref()
            .ok_or_else(|| ProtocolError::Invalid("a submitted request needs an id".into()))?;
        protocol::validate_task_id(id)?;
        protocol::validate_kind(&request.kind)?;
        let body = protocol::encode(request)?;
        let mut properties = amqp::persistent(protocol::MSGPACK)
            .with_message_id(ShortString::from(id))
            .with_correlation_id(ShortString::from(id));
        if let Some(reply_to) = reply_to {
            properties = properties.with_reply_to(ShortString::from(reply_to));
        }
        self.publisher
            .publish(Outgoing {
                exchange: topology::SUBMIT_EXCHANGE,
                routing_key: topology::TASKS_QUEUE,
                body: &body,
                properties,
                mandatory: true,
            })
            .await?;
        Ok(())
    }

    /// Handler slots per worker type, summed over the live workers that announce them; empty
    /// when Redis cannot be read (the counts then go uncapped, as before announcements had
    /// slots).
    async fn live_slots(&self) -> HashMap<String, u64> {
        let mut slots: HashMap<String, u64> = HashMap::new();
        for (_, announcement) in services::read_live(&self.store).await.unwrap_or_default() {
            for (worker_type, n) in announcement.slots {
                *slots.entry(worker_type).or_default() += u64::from(n);
            }
        }
        slots
    }

    /// The state of a task, or `None` when Redis knows no such task.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn status(&self, id: &str) -> Result<Option<TaskStatus>, ClientError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(None);
        };
        let status = if record.state == TaskState::Finished {
            self.store.outcome(id).await?.map(|outcome| outcome.status)
        } else {
            None
        };
        let progress = self.store.type_progress(id).await?;
        let slots = self.live_slots().await;
        let mut types = Vec::with_capacity(progress.len());
        for progress in progress {
            let queue = topology::subtask_queue(&progress.worker_type);
            let (queued, consumers) = self.queue_info(&queue).await;
            let note = (record.state != TaskState::Finished
                && progress.in_flight() > 0
                && consumers == Some(0))
            .then(|| {
                format!(
                    "no worker serves type {:?}: {} subtask(s) wait in {queue} (start chorus-worker --types {})",
                    progress.worker_type,
                    progress.in_flight(),
                    progress.worker_type
                )
            });
            let slots = slots.get(&progress.worker_type).copied();
            types.push(TypeStatus {
                progress,
                queue,
                queued,
                consumers,
                slots,
                note,
            });
        }
        let running: u64 = types.iter().map(|t| t.progress.in_flight()).sum();
        let pending: u64 = types.iter().map(|t| t.progress.waiting()).sum();
        Ok(Some(TaskStatus {
            id: id.to_owned(),
            state: record.state.as_str(),
            kind: record.kind,
            subtasks: record.total,
            published: record.published,
            settled: record.succeeded + record.failed + record.skipped,
            succeeded: record.succeeded,
            failed: record.failed,
            skipped: record.skipped,
            running,
            pending,
            retries: record.retries,
            round: record.round,
            types,
            duplicate_results: record.duplicates,
            status,
            tokens: record.tokens,
            cost: record.cost,
        }))
    }

    /// Ready messages and consumers of `queue`, or `None`s when it does not exist or cannot
    /// be asked.
    async fn queue_info(&self, queue: &str) -> (Option<u32>, Option<u32>) {
        match amqp::queue_counts(&self.connection, queue).await {
            Ok(Some(counts)) => (Some(counts.ready), Some(counts.consumers)),
            _ => (None, None),
        }
    }

    /// Asks for a task to be cancelled (a `cancel` message to `chorus.control` through
    /// `chorus.submit`).
    ///
    /// # Errors
    /// The broker did not confirm.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<(), ClientError> {
        protocol::validate_task_id(id)?;
        let body = protocol::encode(&Control::Cancel {
            task: id.to_owned(),
            reason,
        })?;
        self.publisher
            .publish(Outgoing {
                exchange: topology::SUBMIT_EXCHANGE,
                routing_key: topology::CONTROL_QUEUE,
                body: &body,
                properties: amqp::persistent(protocol::MSGPACK),
                mandatory: true,
            })
            .await?;
        Ok(())
    }

    /// Cancels task `id` unless it has finished (then says so and sends nothing); says too
    /// when Redis does not know the task yet, whose cancel is kept for its claim.
    ///
    /// # Errors
    /// Redis failed, or the broker did not confirm.
    pub async fn cancel_if_live(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<CancelRequest, ClientError> {
        protocol::validate_task_id(id)?;
        let Some(record) = self.store.task(id).await? else {
            // Sent, not dropped: a task submitted a moment ago may not be claimed yet.
            self.cancel(id, reason).await?;
            return Ok(CancelRequest::NotKnownYet);
        };
        if record.state == TaskState::Finished {
            let status = self.store.outcome(id).await?.map(|o| o.status);
            return Ok(CancelRequest::Finished(status));
        }
        self.cancel(id, reason).await?;
        Ok(CancelRequest::Requested)
    }

    /// The stored outcome of a task, if it has one.
    ///
    /// # Errors
    /// Redis failed.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome>, ClientError> {
        Ok(self.store.outcome(id).await?)
    }

    /// The Redis store, for the admin reads built on the same connection (the dashboard).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The RabbitMQ connection, for the admin work built on it (the dashboard's dead letters
    /// and event consumers).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The confirmed publisher (the dashboard's requeue).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}
