//! The worker: takes subtasks from the queues of the worker types it serves (`chorus.subtasks`
//! for `default`, `chorus.subtasks.<type>` for the others), runs their kind's handler under the
//! subtask's timeout, the task's deadline and the type's rate limit, and publishes the result
//! (with anything the handler spawned) — or, on a retryable failure, the next attempt into a
//! delay queue — with a confirm before it acks. Subtasks of tasks that are over are dropped, and
//! running handlers of such tasks see their cancellation token.

mod attempt;
mod flags;
mod results;
mod rollout;
#[cfg(test)]
mod tests;
pub mod watch;

use std::{collections::HashMap, sync::Arc, time::Duration};

use attempt::{await_handler, result_of, time_limit, AbortOnDrop, Attempt, Settlement};
use backon::{BackoffBuilder, ExponentialBuilder};
use chorus_shared::{
    amqp::{self, DeadLetter, Outgoing, Publisher},
    clock::now_ms,
    config::{self, ConnectArgs, FileArgs, KindsArgs, LimitArgs, LogArgs, ShutdownArgs},
    consume::{self, check_size, ConsumeConfig, Disposition, ServiceSpec, Session},
    error::ServiceError,
    failpoint,
    kinds::{self, HandlerContext, Registry},
    observe::{self, metrics},
    protocol::{self, SubtaskBatch, SubtaskEvent, SubtaskMessage, SubtaskOutcome},
    publish,
    ratelimit::RateLimit,
    services::{self, Announcement, Announcer, Directory, Placement, Role},
    store::Store,
    text, topology,
    usage::{self, Budget, Usage, UsageMeter},
};
use clap::Parser;
use lapin::message::Delivery;
use results::ResultSender;
use serde_bytes::ByteBuf;
use tokio::sync::{RwLock, Semaphore};
use tokio_util::sync::CancellationToken;
use watch::TaskWatch;

pub use flags::{prefetch_of, Config};
#[cfg(test)]
use flags::{DEFAULT_CONCURRENCY, MAX_DEFAULT_PREFETCH};

struct Worker {
    config: Config,
    registry: Registry,
    publisher: Publisher,
    /// Results of single subtasks, sent together when they settle together.
    results: ResultSender,
    store: Store,
    /// Redelivered subtasks take it exclusively, so that if one of them crashes the process,
    /// no innocent subtask was running beside it (and only the culprit's start is counted).
    quarantine: Arc<RwLock<()>>,
    /// Which tasks are over, and the cancellation tokens of running handlers.
    watch: Arc<TaskWatch>,
    /// Rate limits by worker type.
    rate_limits: Arc<HashMap<String, RateLimit>>,
    /// Handlers of this consumer's worker type that may run at once (`--types`,
    /// `--concurrency`), whether their subtasks came alone or in batches.
    handlers: Arc<Semaphore>,
    /// Cancelled at shutdown: a subtask still waiting for a handler slot then goes back to the
    /// queue instead of starting in the grace period, which is for the handlers running.
    stopping: CancellationToken,
    /// The other live services' announcements, for subtasks of kinds this worker lacks.
    directory: Arc<Directory>,
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
    observe::serve(&config.http, observe::WORKER_LISTEN, shutdown.clone())?;
    // Not connect_service: the orchestrator and the synthesizer warn about Redis's persistence
    // settings (docs/protocol.md); the workers, often many, do not repeat it.
    let store = Store::connect_settings(&config.connect).await?;
    registry.attach_store(&store);
    observe::health::attach_store(&store);
    // One gate for the process, across sessions: handlers of an old session may still be
    // running during the grace period.
    let quarantine = Arc::new(RwLock::new(()));
    let watch = TaskWatch::start(store.clone(), shutdown.clone());
    let rate_limits: Arc<HashMap<String, RateLimit>> = Arc::new(
        config
            .rate_limits
            .iter()
            .map(|limit| (limit.worker_type.clone(), limit.clone()))
            .collect(),
    );
    let types: Vec<String> = config.types.iter().map(|(name, _)| name.clone()).collect();
    tracing::info!(kinds = ?registry.names(), ?types, concurrency = config.concurrency, rate_limits = ?config.rate_limits.iter().map(ToString::to_string).collect::<Vec<_>>(), "worker starting");
    let (spec, handler_pools) = consumers(&config);
    let instance = services::instance_id();
    let directory = Arc::new(Directory::new(store.clone(), instance.clone(), &registry));
    let announcer = Announcer::start(
        store.clone(),
        instance,
        Announcement::of(Role::Worker, &registry, types).with_slots(
            config
                .types
                .iter()
                .map(|(name, slots)| (name.clone(), u32::from(slots.unwrap_or(config.concurrency))))
                .collect(),
        ),
    )
    .await?;
    let stopping = shutdown.clone();
    let served = consume::serve(spec, shutdown, |session: &Session, queue: &str| {
        let handlers = handler_pools
            .get(queue)
            .map_or_else(|| Arc::new(Semaphore::new(1)), Arc::clone);
        let worker = Arc::new(Worker {
            handlers,
            stopping: stopping.clone(),
            config: config.clone(),
            registry: registry.clone(),
            publisher: session.publisher.clone(),
            results: ResultSender::start(
                session.publisher.clone(),
                config.limits.max_message_bytes(),
            ),
            store: store.clone(),
            quarantine: Arc::clone(&quarantine),
            watch: Arc::clone(&watch),
            rate_limits: Arc::clone(&rate_limits),
            directory: Arc::clone(&directory),
        });
        move |delivery: Arc<Delivery>| {
            let worker = Arc::clone(&worker);
            async move { worker.handle(&delivery).await }
        }
    })
    .await;
    announcer.stop().await;
    served?;
    tracing::info!("worker stopped");
    Ok(())
}

/// The worker's service spec, with a consumer per queue of `--types`, and per queue its pool
/// of handler permits.
fn consumers(config: &Config) -> (ServiceSpec, HashMap<String, Arc<Semaphore>>) {
    let mut spec = ServiceSpec::without_consumers(
        "chorus-worker",
        &config.connect,
        Duration::from_millis(config.retry_max_delay_ms),
    );
    // Per queue, one pool of handler permits for the process, shared across sessions like the
    // quarantine gate.
    let mut handler_pools: HashMap<String, Arc<Semaphore>> = HashMap::new();
    for (worker_type, concurrency) in &config.types {
        let queue = topology::subtask_queue(worker_type);
        if handler_pools.contains_key(&queue) {
            continue;
        }
        let concurrency = concurrency.unwrap_or(config.concurrency);
        let prefetch = prefetch_of(concurrency, config.prefetch);
        metrics::slots_total(worker_type, usize::from(concurrency));
        handler_pools.insert(
            queue.clone(),
            Arc::new(Semaphore::new(usize::from(concurrency))),
        );
        spec = spec.consuming(ConsumeConfig {
            queue,
            prefetch,
            concurrency: usize::from(prefetch),
            grace: config.shutdown.grace(),
            worker_type: Some(worker_type.clone()),
        });
    }
    (spec, handler_pools)
}

/// The error of a subtask that did not start because its task's `max_tokens` was spent (the
/// same text as an `llm` step's refusal of a call).
pub const TOKEN_BUDGET_EXCEEDED: &str = usage::TOKEN_BUDGET_EXCEEDED;

/// When the publisher of a subtask message last found its task unfinished, if it says.
fn live_at(delivery: &Delivery) -> Option<u64> {
    amqp::header_u64(&delivery.properties, topology::LIVE_AT_HEADER)
}

impl Worker {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        if amqp::property_str(delivery.properties.kind()) == Some(protocol::SUBTASK_BATCH_TYPE) {
            return self.handle_batch(delivery).await;
        }
        // Counted before anything waits, so that results of siblings ready now go out together.
        let handling = self.results.handling();
        let subtask: SubtaskMessage = protocol::decode(&delivery.data)?;
        if let Err(error) = subtask.validate() {
            return Ok(Disposition::Reject {
                error,
                task: None,
                subtask: Some(subtask.subtask),
            });
        }
        let wanted = rollout::Wanted {
            kind: &subtask.kind,
            fingerprint: subtask.fingerprint.as_deref(),
            worker_type: &subtask.worker_type,
        };
        let Some(_held) = self.admit(delivery, &subtask.task, &wanted).await? else {
            return Ok(Disposition::Ack);
        };
        match self
            .attempt(
                &subtask,
                consume::is_redelivery(delivery),
                live_at(delivery),
            )
            .await?
        {
            Settlement::Nothing => {}
            Settlement::Settled(result) => {
                self.results.send(&result, handling).await?;
                failpoint::hit("worker.after-publish-result").await;
                if let SubtaskOutcome::Failed(message) = &result.outcome {
                    self.dead_letter(&subtask, &delivery.data, &delivery.properties, message)
                        .await?;
                }
            }
            Settlement::Retry(next, error, after) => {
                drop(handling);
                self.schedule_retry(&next, &error, after).await?;
            }
        }
        Ok(Disposition::Ack)
    }

    /// Whether the subtask (or batch) of `task` in `delivery` runs here: not when its task is
    /// over (dropped) or when the roll-out places `wanted` on another worker (deferred: sent
    /// back to its queue). Returns the hold on the task while it runs (until its ack: the
    /// sweeper must not republish a subtask waiting here for a slot), `None` when the message
    /// is only to be acked.
    ///
    /// # Errors
    /// Redis or the broker failed (the message comes back).
    async fn admit(
        &self,
        delivery: &Delivery,
        task: &str,
        wanted: &rollout::Wanted<'_>,
    ) -> Result<Option<watch::Held>, ServiceError> {
        if !self.watch.is_live(task, live_at(delivery)).await? {
            tracing::debug!(%task, worker_type = wanted.worker_type, "task is over; dropping its subtasks");
            return Ok(None);
        }
        let held = self.watch.hold(task);
        if rollout::place(&self.directory, wanted, delivery).await? == Placement::Defer {
            self.defer(wanted.worker_type, delivery).await?;
            return Ok(None);
        }
        Ok(Some(held))
    }

    /// Runs the subtasks of a batch side by side (each under a handler permit of its type),
    /// then publishes every retry and all the results together, and only then lets the batch
    /// be acked: a crash at any point before redoes the whole batch, and what was already
    /// published comes again as duplicates that the synthesizer ignores.
    async fn handle_batch(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        let batch: SubtaskBatch = protocol::decode(&delivery.data)?;
        if let Err(error) = batch.validate() {
            return Ok(Disposition::Reject {
                error,
                task: Some(batch.task),
                subtask: None,
            });
        }
        let wanted = rollout::Wanted {
            kind: &batch.kind,
            fingerprint: batch.fingerprint.as_deref(),
            worker_type: &batch.worker_type,
        };
        let Some(_held) = self.admit(delivery, &batch.task, &wanted).await? else {
            return Ok(Disposition::Ack);
        };
        // A redelivered message's subtasks run alone, counted.
        let redelivered = consume::is_redelivery(delivery);
        let subtasks = batch.into_subtasks();
        let settlements = self
            .attempt_all(&subtasks, redelivered, live_at(delivery))
            .await?;
        self.settle_batch(&subtasks, settlements).await?;
        Ok(Disposition::Ack)
    }

    /// Runs an attempt of each of `subtasks` side by side; returns what each leaves to
    /// publish, in their order, or the error that has the whole batch redone.
    async fn attempt_all(
        &self,
        subtasks: &[SubtaskMessage],
        redelivered: bool,
        published_ms: Option<u64>,
    ) -> Result<Vec<Settlement>, ServiceError> {
        // Every item runs to its end, whatever happens to the others: none is dropped while its
        // handler still runs.
        let attempts = futures::future::join_all(
            subtasks
                .iter()
                .map(|subtask| self.attempt(subtask, redelivered, published_ms)),
        )
        .await;
        let mut settlements = Vec::with_capacity(attempts.len());
        for (subtask, attempt) in subtasks.iter().zip(attempts) {
            settlements.push(match attempt {
                Ok(settlement) => settlement,
                // Redis or the broker in trouble: the whole batch is redone once they are back.
                Err(ServiceError::Broker(error)) => return Err(error.into()),
                Err(ServiceError::Store(error)) if error.is_transient() => return Err(error.into()),
                // Stopping before some items started: the batch comes back whole (the items
                // that ran are duplicates the fan-in ignores).
                Err(ServiceError::ShuttingDown) => return Err(ServiceError::ShuttingDown),
                // Anything else is this item's problem alone: it fails, the others carry on.
                Err(error) => Settlement::Settled(result_of(
                    subtask,
                    SubtaskOutcome::Failed(format!("cannot run: {error}")),
                    Vec::new(),
                    subtask.usage.clone(),
                )),
            });
        }
        Ok(settlements)
    }

    /// Publishes what the attempts of a batch's `subtasks` left: every retry, then all the
    /// results together, then a copy of each subtask that failed for good to `chorus.dead`.
    async fn settle_batch(
        &self,
        subtasks: &[SubtaskMessage],
        settlements: Vec<Settlement>,
    ) -> Result<(), ServiceError> {
        let mut results = Vec::with_capacity(subtasks.len());
        let mut retries = Vec::new();
        let mut failed = Vec::new();
        for (subtask, settlement) in subtasks.iter().zip(settlements) {
            match settlement {
                Settlement::Nothing => {}
                Settlement::Settled(result) => {
                    if let SubtaskOutcome::Failed(message) = &result.outcome {
                        failed.push((subtask, message.clone()));
                    }
                    results.push(result);
                }
                Settlement::Retry(next, error, after) => retries.push((next, error, after)),
            }
        }
        futures::future::try_join_all(
            retries
                .iter()
                .map(|(next, error, after)| self.schedule_retry(next, error, *after)),
        )
        .await?;
        publish::publish_results(
            &self.publisher,
            &results,
            self.config.limits.max_message_bytes(),
        )
        .await?;
        failpoint::hit("worker.after-publish-result").await;
        for (subtask, message) in failed {
            let body = protocol::encode(subtask)?;
            self.dead_letter(
                subtask,
                &body,
                &amqp::persistent(protocol::MSGPACK),
                &message,
            )
            .await?;
        }
        Ok(())
    }

    /// Runs one attempt of `subtask` (alone and counted when its message was redelivered;
    /// `published_ms`: when its message was published, for the queue wait) and decides what
    /// follows it.
    async fn attempt(
        &self,
        subtask: &SubtaskMessage,
        redelivered: bool,
        published_ms: Option<u64>,
    ) -> Result<Settlement, ServiceError> {
        // The semaphore is never closed, so a permit always comes, unless shutdown comes first.
        let _permit = tokio::select! {
            biased;
            () = self.stopping.cancelled() => return Err(ServiceError::ShuttingDown),
            permit = self.handlers.acquire() => permit.ok(),
        };
        let _busy = metrics::slot_busy(&subtask.worker_type);
        let attempt = if subtask.deadline_at_ms.is_some_and(|at| now_ms() >= at) {
            Attempt::failed(
                "the task's deadline passed before this subtask started",
                false,
            )
        } else if redelivered {
            match self.run_suspect(subtask, published_ms).await? {
                Some(attempt) => attempt,
                None => return Ok(Settlement::Nothing),
            }
        } else {
            let _shared = self.quarantine.read().await;
            self.run_handler(subtask, published_ms).await?
        };
        // Every attempt's usage goes on with the subtask: an earlier attempt's was paid too.
        let so_far = |usage: Vec<Usage>| {
            let mut all = subtask.usage.clone();
            usage::merge(&mut all, usage);
            all
        };
        let result = |outcome, spawned, usage| result_of(subtask, outcome, spawned, so_far(usage));
        attempt.record_metrics(subtask, self.registry.get(&subtask.kind).is_some());
        Ok(match attempt {
            Attempt::TaskOver => Settlement::Nothing,
            Attempt::Succeeded {
                output,
                spawned,
                usage,
            } => Settlement::Settled(result(
                SubtaskOutcome::Succeeded(ByteBuf::from(output)),
                spawned,
                usage,
            )),
            Attempt::Failed {
                message,
                retryable,
                retry_after,
                usage,
            } if retryable && subtask.attempt < subtask.max_attempts => {
                let next = SubtaskMessage {
                    attempt: subtask.attempt + 1,
                    usage: so_far(usage),
                    ..subtask.clone()
                };
                Settlement::Retry(next, message, retry_after)
            }
            Attempt::Failed { message, usage, .. } => {
                Settlement::Settled(result(SubtaskOutcome::Failed(message), Vec::new(), usage))
            }
        })
    }

    /// Sends a copy of a subtask that failed for good to `chorus.dead`, for the operator.
    async fn dead_letter(
        &self,
        subtask: &SubtaskMessage,
        body: &[u8],
        properties: &lapin::BasicProperties,
        message: &str,
    ) -> Result<(), ServiceError> {
        let reason = format!("failed after {} attempt(s): {message}", subtask.attempt);
        tracing::warn!(task = %subtask.task, subtask = %text::bounded(&subtask.subtask, text::MAX_NAME_BYTES), reason = %text::reason(&reason), "subtask failed for good");
        amqp::dead_letter(
            &self.publisher,
            body,
            properties,
            DeadLetter {
                source_queue: &topology::subtask_queue(&subtask.worker_type),
                reason: &reason,
                task: Some(&subtask.task),
                subtask: Some(&subtask.subtask),
            },
        )
        .await?;
        Ok(())
    }

    /// Runs a redelivered subtask alone, counting its starts in Redis: one that keeps taking its
    /// worker down (a crash, an OOM kill) is failed after `--max-deliveries` runs, while the
    /// subtasks that were merely prefetched beside it are not blamed.
    async fn run_suspect(
        &self,
        subtask: &SubtaskMessage,
        published_ms: Option<u64>,
    ) -> Result<Option<Attempt>, ServiceError> {
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
            return Ok(Some(Attempt::failed(
                format!(
                    "started {unfinished} times without finishing: its handler keeps crashing or stalling the worker"
                ),
                false,
            )));
        }
        // Uncounted whatever happened: only a run that takes the process down stays counted.
        let attempt = self.run_handler(subtask, published_ms).await;
        self.store.end_run(&subtask.task, &subtask.subtask).await?;
        Ok(Some(attempt?))
    }

    /// Waits for a token of the subtask's worker type, if it is rate-limited.
    async fn take_token(
        &self,
        subtask: &SubtaskMessage,
        cancel: &CancellationToken,
    ) -> Result<bool, ServiceError> {
        let Some(rate_limit) = self.rate_limits.get(&subtask.worker_type) else {
            return Ok(true);
        };
        while let Some(wait) = self.store.take_token(rate_limit).await? {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Runs one attempt of `subtask`'s handler: after its rate-limit token and its
    /// dependencies' outputs, under its time limit, with its `running` event and the event of
    /// how it ended.
    async fn run_handler(
        &self,
        subtask: &SubtaskMessage,
        published_ms: Option<u64>,
    ) -> Result<Attempt, ServiceError> {
        let Some(kind) = self.registry.get(&subtask.kind) else {
            return Ok(Attempt::failed(
                format!(
                    "kind {:?} is not registered in this worker, nor announced by any live service; this worker knows: {}",
                    subtask.kind,
                    self.registry.names().join(", ")
                ),
                false,
            ));
        };
        let running = self.watch.enter(&subtask.task);
        if !self.take_token(subtask, running.token()).await? {
            return Ok(Attempt::failed(
                "task ended while waiting for a rate-limit token",
                false,
            ));
        }
        let mut budget = None;
        if let Some(max_tokens) = subtask.max_tokens {
            // One HGET: cheap beside any model call, and a call it prevents is paid for nothing.
            // This subtask's earlier attempts were paid too, though not recorded yet.
            let carried = subtask
                .usage
                .iter()
                .fold(0u64, |sum, entry| sum.saturating_add(entry.tokens()));
            let used = self.store.tokens_used(&subtask.task).await?;
            let left = Budget {
                max_tokens,
                used: used.saturating_add(carried),
            };
            if left.spent() {
                return Ok(Attempt::failed(TOKEN_BUDGET_EXCEEDED, false));
            }
            budget = Some(left);
        }
        let dependencies = match self.dependencies(subtask).await? {
            Ok(outputs) => outputs,
            Err(failed) => return Ok(failed),
        };
        let context = HandlerContext {
            task: subtask.task.clone(),
            subtask: subtask.subtask.clone(),
            kind: subtask.kind.clone(),
            worker_type: subtask.worker_type.clone(),
            attempt: subtask.attempt,
            max_attempts: subtask.max_attempts,
            time_limit: Some(time_limit(subtask).0),
            depth: subtask.depth,
            dependencies,
            cancel: running.token().clone(),
            spawned: kinds::Spawned::default(),
            usage: UsageMeter::default(),
            budget,
        };
        let spawned = context.spawned.clone();
        let usage = context.usage.clone();
        self.publish_event(subtask, "running").await;
        // Spawned so that a panicking handler fails its attempt instead of the worker; aborted
        // if this attempt is dropped (a batch redone, the grace period over), so that it never
        // runs on without its permit.
        let waited = published_ms.map(|at| now_ms().saturating_sub(at) as f64 / 1000.0);
        metrics::subtask_started(&subtask.kind, &subtask.worker_type, waited);
        let started = std::time::Instant::now();
        let handler = AbortOnDrop(tokio::spawn(kind.handle(&subtask.payload, context)));
        let attempt = await_handler(handler, subtask, &spawned, &usage).await;
        metrics::subtask_ran(
            &subtask.kind,
            &subtask.worker_type,
            started.elapsed().as_secs_f64(),
        );
        if running.token().is_cancelled() {
            tracing::debug!(task = %subtask.task, subtask = %text::bounded(&subtask.subtask, text::MAX_NAME_BYTES), "task ended while its handler ran; result dropped");
            return Ok(Attempt::TaskOver);
        }
        self.publish_event(subtask, attempt.event_status(subtask))
            .await;
        Ok(attempt)
    }

    /// The outputs of the subtasks `subtask` depends on, in `depends_on` order, or the failed
    /// attempt when they cannot be read (a passing Redis failure is an error instead, so the
    /// message is handled again).
    async fn dependencies(
        &self,
        subtask: &SubtaskMessage,
    ) -> Result<Result<Vec<(String, ByteBuf)>, Attempt>, ServiceError> {
        if subtask.depends_on.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        match self.store.outputs(&subtask.task, &subtask.depends_on).await {
            Ok(outputs) => Ok(Ok(outputs)),
            Err(error) if error.is_transient() => Err(error.into()),
            Err(error) => Ok(Err(Attempt::failed(
                format!("cannot read dependency outputs: {error}"),
                false,
            ))),
        }
    }

    /// Publishes `subtask.<status>` on `chorus.events` when the task asked for events. Events
    /// are for dashboards: one that cannot be published is logged, never retried.
    async fn publish_event(&self, subtask: &SubtaskMessage, status: &str) {
        if !subtask.events {
            return;
        }
        let event = SubtaskEvent {
            task: subtask.task.clone(),
            subtask: subtask.subtask.clone(),
            worker_type: subtask.worker_type.clone(),
            attempt: subtask.attempt,
            status: status.to_owned(),
            at_ms: now_ms(),
        };
        publish::announce(&self.publisher, &event).await;
    }

    /// Publishes the next attempt of a subtask into the delay queue its backoff picks, or later
    /// when its handler asked for a longer wait (`retry_after`, see [`Config::retry_wait`]).
    async fn schedule_retry(
        &self,
        next: &SubtaskMessage,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), ServiceError> {
        let delay = self
            .config
            .retry_wait(self.config.retry_delay(next.attempt), retry_after);
        let queue = topology::subtask_queue(&next.worker_type);
        tracing::info!(
            task = %next.task,
            subtask = %text::bounded(&next.subtask, text::MAX_NAME_BYTES),
            attempt = next.attempt - 1,
            delay_ms = delay.as_millis() as u64,
            error = %text::reason(message),
            "attempt failed; retrying later"
        );
        let body = protocol::encode(next)?;
        self.publisher
            .publish(Outgoing {
                exchange: topology::DELAY_EXCHANGE,
                routing_key: &queue,
                body: &body,
                properties: topology::delayed(amqp::persistent(protocol::MSGPACK), delay),
                mandatory: true,
            })
            .await?;
        Ok(())
    }
}
