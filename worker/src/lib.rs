//! The worker: takes subtasks from `chorus.subtasks`, runs their kind's handler under the
//! subtask's timeout, and publishes the result — or, on a retryable failure, the next attempt
//! into a delay queue — with a confirm before it acks.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use chorus_shared::{
    amqp::{self, DeadLetter, Outgoing, Publisher},
    config::{ConnectArgs, LimitArgs, LogArgs, ShutdownArgs},
    consume::{self, check_size, earlier_deliveries, Disposition, ServiceSpec, Session},
    error::ServiceError,
    failpoint,
    finish::panic_message,
    kinds::{HandlerContext, Registry},
    protocol::{self, ResultMessage, SubtaskMessage, SubtaskOutcome},
    store::Store,
    topology,
};
use clap::Parser;
use lapin::{message::Delivery, types::ShortString};
use serde_bytes::ByteBuf;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

/// Flags of `chorus-worker`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "chorus-worker",
    version,
    about = "Chorus worker: runs subtasks from chorus.subtasks and publishes their results.",
    long_about = "Chorus worker: consumes subtasks from chorus.subtasks with a prefetch of \
                  --concurrency, runs each under its timeout, publishes the result to \
                  chorus.results with a confirm and only then acks. Failed attempts are retried \
                  with exponential backoff and jitter through delay queues, so a waiting retry \
                  holds no slot and survives crashes. Run as many as the load needs, anywhere."
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Subtasks run at once by this process; also the prefetch, so the broker never hands it
    /// more than it runs.
    #[arg(long, env = "CHORUS_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Delay before the first retry; each next one doubles, plus random jitter.
    #[arg(long, env = "CHORUS_RETRY_BASE_DELAY_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_base_delay_ms: u64,

    /// Longest delay between two attempts.
    #[arg(long, env = "CHORUS_RETRY_MAX_DELAY_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,
}

impl Config {
    /// Delay before attempt `next_attempt` (2 for the first retry), with jitter.
    pub fn retry_delay(&self, next_attempt: u32) -> Duration {
        // Past 64 doublings every delay is the maximum anyway.
        let retries = usize::try_from(next_attempt.saturating_sub(1).min(64))
            .unwrap_or(usize::MAX)
            .max(1);
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry_base_delay_ms))
            .with_max_delay(Duration::from_millis(self.retry_max_delay_ms))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(retries)
            .build()
            .last()
            .unwrap_or(Duration::from_millis(self.retry_base_delay_ms))
            .min(Duration::from_millis(self.retry_max_delay_ms))
    }
}

struct Worker {
    config: Config,
    registry: Registry,
    publisher: Publisher,
    store: Store,
    /// Redelivered subtasks take it exclusively, so that if one of them crashes the process,
    /// no innocent subtask was running beside it (and only the culprit's start is counted).
    quarantine: Arc<RwLock<()>>,
}

/// Runs the worker until `shutdown` is cancelled; work in progress then gets the grace period.
///
/// # Errors
/// Redis cannot be reached at start-up.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::connect(&config.connect.redis_url, config.connect.redis_timeout()).await?;
    // One gate for the process, across sessions: handlers of an old session may still be
    // running during the grace period.
    let quarantine = Arc::new(RwLock::new(()));
    tracing::info!(kinds = ?registry.names(), concurrency = config.concurrency, "worker starting");
    let spec = ServiceSpec::new(
        "chorus-worker",
        &config.connect,
        topology::SUBTASKS_QUEUE,
        config.concurrency,
        config.shutdown.grace(),
        Duration::from_millis(config.retry_max_delay_ms),
    );
    consume::serve(spec, shutdown, |session: &Session| {
        let worker = Arc::new(Worker {
            config: config.clone(),
            registry: registry.clone(),
            publisher: session.publisher.clone(),
            store: store.clone(),
            quarantine: Arc::clone(&quarantine),
        });
        move |delivery: Arc<Delivery>| {
            let worker = Arc::clone(&worker);
            async move { worker.handle(&delivery).await }
        }
    })
    .await;
    tracing::info!("worker stopped");
    Ok(())
}

/// How an attempt ended, before deciding between retry and settling.
enum Attempt {
    Succeeded(Vec<u8>),
    Failed { message: String, retryable: bool },
}

impl Worker {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let subtask: SubtaskMessage = protocol::decode(&delivery.data)?;
        if let Err(error) = subtask.validate() {
            return Ok(Disposition::Reject(error, None, Some(subtask.subtask)));
        }
        let attempt = if delivery.redelivered || earlier_deliveries(delivery) > 0 {
            match self.run_suspect(&subtask).await? {
                Some(attempt) => attempt,
                None => return Ok(Disposition::Ack),
            }
        } else {
            let _shared = self.quarantine.read().await;
            self.run_handler(&subtask).await
        };
        match attempt {
            Attempt::Succeeded(output) => {
                self.publish_result(&subtask, SubtaskOutcome::Succeeded(ByteBuf::from(output)))
                    .await?;
                failpoint::hit("worker.after-publish-result").await;
            }
            Attempt::Failed { message, retryable }
                if retryable && subtask.attempt < subtask.max_attempts =>
            {
                self.schedule_retry(&subtask, &message).await?;
            }
            Attempt::Failed { message, .. } => {
                let reason = format!("failed after {} attempt(s): {message}", subtask.attempt);
                tracing::warn!(task = %subtask.task, subtask = %subtask.subtask, %reason, "subtask failed for good");
                self.publish_result(&subtask, SubtaskOutcome::Failed(message))
                    .await?;
                amqp::dead_letter(
                    &self.publisher,
                    &delivery.data,
                    &delivery.properties,
                    DeadLetter {
                        source_queue: topology::SUBTASKS_QUEUE,
                        reason: &reason,
                        task: Some(&subtask.task),
                        subtask: Some(&subtask.subtask),
                    },
                )
                .await?;
            }
        }
        Ok(Disposition::Ack)
    }

    /// Runs a redelivered subtask alone, counting its starts in Redis: one that keeps taking its
    /// worker down (a crash, an OOM kill) is failed after `--max-deliveries` runs, while the
    /// subtasks that were merely prefetched beside it are not blamed.
    async fn run_suspect(&self, subtask: &SubtaskMessage) -> Result<Option<Attempt>, ServiceError> {
        let _alone = self.quarantine.write().await;
        let Some(unfinished) = self
            .store
            .begin_run(&subtask.task, &subtask.subtask)
            .await?
        else {
            // The task is over; running this copy would change nothing.
            return Ok(None);
        };
        // The first delivery ran unobserved: assume it did not finish either.
        if unfinished >= self.config.limits.max_deliveries {
            return Ok(Some(Attempt::Failed {
                message: format!(
                    "started {unfinished} times without finishing: its handler keeps crashing or stalling the worker"
                ),
                retryable: false,
            }));
        }
        let attempt = self.run_handler(subtask).await;
        self.store.end_run(&subtask.task, &subtask.subtask).await?;
        Ok(Some(attempt))
    }

    async fn run_handler(&self, subtask: &SubtaskMessage) -> Attempt {
        let Some(kind) = self.registry.get(&subtask.kind) else {
            return Attempt::Failed {
                message: format!("kind {:?} is not registered in this worker", subtask.kind),
                retryable: false,
            };
        };
        let context = HandlerContext {
            task: subtask.task.clone(),
            subtask: subtask.subtask.clone(),
            attempt: subtask.attempt,
            max_attempts: subtask.max_attempts,
        };
        // Spawned so that a panicking handler fails its attempt instead of the worker.
        let mut running = tokio::spawn(kind.handle(&subtask.payload, context));
        let limit = Duration::from_millis(subtask.timeout_ms);
        match tokio::time::timeout(limit, &mut running).await {
            Ok(Ok(Ok(output))) => Attempt::Succeeded(output),
            Ok(Ok(Err(error))) => Attempt::Failed {
                message: error.to_string(),
                retryable: error.is_retryable(),
            },
            Ok(Err(join)) => Attempt::Failed {
                message: format!("handler panicked: {}", panic_message(join)),
                retryable: true,
            },
            Err(_) => {
                running.abort();
                Attempt::Failed {
                    message: format!("timed out after {} ms", subtask.timeout_ms),
                    retryable: true,
                }
            }
        }
    }

    async fn publish_result(
        &self,
        subtask: &SubtaskMessage,
        outcome: SubtaskOutcome,
    ) -> Result<(), ServiceError> {
        let body = protocol::encode(&ResultMessage {
            task: subtask.task.clone(),
            subtask: subtask.subtask.clone(),
            attempts: subtask.attempt,
            outcome,
        })?;
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: topology::RESULTS_QUEUE,
                body: &body,
                properties: amqp::persistent(protocol::MSGPACK),
                mandatory: false,
            })
            .await?;
        Ok(())
    }

    async fn schedule_retry(
        &self,
        subtask: &SubtaskMessage,
        message: &str,
    ) -> Result<(), ServiceError> {
        let next = SubtaskMessage {
            attempt: subtask.attempt + 1,
            ..subtask.clone()
        };
        let delay = self.config.retry_delay(next.attempt);
        let queue = topology::delay_queue_for(delay);
        tracing::info!(
            task = %subtask.task,
            subtask = %subtask.subtask,
            attempt = subtask.attempt,
            delay_ms = delay.as_millis() as u64,
            error = message,
            "attempt failed; retrying later"
        );
        let body = protocol::encode(&next)?;
        self.publisher
            .publish(Outgoing {
                exchange: "",
                routing_key: &queue,
                body: &body,
                properties: amqp::persistent(protocol::MSGPACK)
                    .with_expiration(ShortString::from(delay.as_millis().to_string())),
                mandatory: true,
            })
            .await?;
        Ok(())
    }
}
