//! The synthesizer: takes settled subtasks from `chorus.results`, records each exactly once in
//! Redis (an atomic script that is a no-op for duplicates) together with what it spawned,
//! publishes the subtasks that this releases (dependencies met, a slot under the cap), and when
//! a task has nothing left pending, reviews, synthesizes and delivers its outcome. It also
//! serves `chorus.control`: cancellations and deadline timers.

use std::sync::Arc;
use std::time::Duration;

use chorus_shared::{
    amqp,
    config::{ConnectArgs, LimitArgs, LogArgs, OutcomeArgs, ShutdownArgs},
    consume::{self, check_size, ConsumeConfig, Disposition, ServiceSpec, Session},
    error::{ProtocolError, ServiceError},
    failpoint,
    finish::Finisher,
    graph,
    kinds::Registry,
    protocol::{
        self, Control, Encoding, ResolvedOptions, ResultMessage, Status, SubtaskEvent,
        SubtaskOutcome,
    },
    release,
    store::{now_ms, Recorded, Store, TaskRecord},
    topology,
};
use clap::Parser;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

/// Flags of `chorus-synthesizer`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "chorus-synthesizer",
    version,
    about = "Chorus synthesizer: records results from chorus.results and delivers each task's outcome.",
    long_about = "Chorus synthesizer: consumes chorus.results, records every settled subtask in \
                  Redis with an atomic script that ignores duplicates, publishes the subtasks \
                  that releases (dependencies met, a slot under the task's cap, spawned work), \
                  and once a task has no pending subtask left, runs its kind's review (for \
                  refinement rounds) and synthesis once (under a lease), stores the outcome, \
                  publishes it to every submitter's reply_to and to the chorus.events exchange. \
                  It also consumes chorus.control (cancellations, deadline timers). Several may \
                  run side by side."
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub outcomes: OutcomeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Results handled at once (also the prefetch).
    #[arg(long, env = "CHORUS_SYNTHESIZER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

/// Control messages handled at once.
const CONTROL_CONCURRENCY: u16 = 8;

struct Synthesizer {
    config: Config,
    finisher: Finisher,
}

/// Runs the synthesizer until `shutdown` is cancelled.
///
/// # Errors
/// Redis cannot be reached at start-up.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::connect(&config.connect.redis_url, config.connect.redis_timeout()).await?;
    store.warn_about_settings().await;
    tracing::info!(kinds = ?registry.names(), "synthesizer starting");
    let spec = ServiceSpec::new(
        "chorus-synthesizer",
        &config.connect,
        topology::RESULTS_QUEUE,
        config.concurrency,
        config.shutdown.grace(),
        Duration::from_millis(100),
    )
    .consuming(ConsumeConfig {
        queue: topology::CONTROL_QUEUE.to_owned(),
        prefetch: CONTROL_CONCURRENCY,
        concurrency: usize::from(CONTROL_CONCURRENCY),
        grace: config.shutdown.grace(),
        worker_type: None,
    });
    consume::serve(spec, shutdown, |session: &Session, queue: &str| {
        let synthesizer = Arc::new(Synthesizer {
            finisher: Finisher::new(
                store.clone(),
                session.publisher.clone(),
                registry.clone(),
                &config.outcomes,
                &config.limits,
            ),
            config: config.clone(),
        });
        let control = queue == topology::CONTROL_QUEUE;
        move |delivery: Arc<Delivery>| {
            let synthesizer = Arc::clone(&synthesizer);
            async move {
                if control {
                    synthesizer.handle_control(&delivery).await
                } else {
                    synthesizer.handle(&delivery).await
                }
            }
        }
    })
    .await;
    tracing::info!("synthesizer stopped");
    Ok(())
}

impl Synthesizer {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let mut result: ResultMessage = protocol::decode(&delivery.data)?;
        let (task, subtask) = (Some(result.task.clone()), Some(result.subtask.clone()));
        if let Err(error) = protocol::validate_task_id(&result.task) {
            return Ok(Disposition::Reject(error, None, subtask));
        }
        if let Some(deepest) = result.spawned.iter().map(|entry| entry.depth).max() {
            let limit = self.config.limits.max_spawn_depth;
            if deepest > limit {
                let message = format!(
                    "spawn limit exceeded: subtask {} spawned work at depth {deepest}; the limit is {limit} (--max-spawn-depth)",
                    result.subtask
                );
                self.finisher
                    .stop(&result.task, Status::Failed, message)
                    .await?;
                return Ok(Disposition::Ack);
            }
        }
        if let Err(reason) = graph::check_spawned(&result.spawned) {
            result.outcome = SubtaskOutcome::Failed(format!("spawned a bad subtask: {reason}"));
            result.spawned.clear();
        }
        let mut recorded = self.record(&result).await?;
        if let Recorded::SpawnConflict { reason } = recorded {
            result.outcome = SubtaskOutcome::Failed(reason);
            result.spawned.clear();
            recorded = self.record(&result).await?;
        }
        failpoint::hit("synthesizer.after-record").await;
        let store = &self.finisher.store;
        match recorded {
            Recorded::New {
                remaining,
                released,
                skipped,
            } => {
                if !skipped.is_empty() || !released.is_empty() {
                    if let Some(record) = store.task(&result.task).await? {
                        if !skipped.is_empty() {
                            tracing::info!(task = %result.task, subtask = %result.subtask, skipped = skipped.len(), "dependents skipped after a failure");
                            self.announce_skipped(&result.task, &record, &skipped).await;
                        }
                        self.finisher
                            .publish_released(&result.task, &record, &released)
                            .await?;
                    }
                }
                if remaining == 0 {
                    self.finisher.finish_if_settled(&result.task).await?;
                }
            }
            Recorded::Duplicate { remaining } => {
                // The first copy may have died between releasing and publishing.
                self.finisher.flush_outbox(&result.task).await?;
                if remaining == 0 {
                    self.finisher.finish_if_settled(&result.task).await?;
                }
            }
            Recorded::TaskFinished => {
                self.finisher.finish_if_settled(&result.task).await?;
            }
            Recorded::TooManySubtasks { would_have } => {
                let message = format!(
                    "spawn limit exceeded: subtask {} would bring the task to {would_have} subtasks; the limit is {} (--max-subtasks)",
                    result.subtask, self.config.limits.max_subtasks
                );
                self.finisher
                    .stop(&result.task, Status::Failed, message)
                    .await?;
            }
            Recorded::SpawnConflict { reason } => {
                return Err(ProtocolError::Invalid(reason).into());
            }
            Recorded::UnknownTask => {
                let error =
                    ProtocolError::Invalid(format!("result for unknown task {:?}", result.task));
                return Ok(Disposition::Reject(error, task, subtask));
            }
            Recorded::UnknownSubtask => {
                let error = ProtocolError::Invalid(format!(
                    "task {:?} has no subtask {:?}",
                    result.task, result.subtask
                ));
                return Ok(Disposition::Reject(error, task, subtask));
            }
        }
        Ok(Disposition::Ack)
    }

    /// Publishes `subtask.skipped` events when the task asked for subtask events.
    async fn announce_skipped(&self, task: &str, record: &TaskRecord, skipped: &[String]) {
        let wants_events = protocol::decode::<ResolvedOptions>(&record.options)
            .is_ok_and(|options| options.subtask_events);
        if !wants_events {
            return;
        }
        let types = match self.finisher.store.worker_types_of(task, skipped).await {
            Ok(types) => types,
            Err(error) => {
                tracing::debug!(task, %error, "cannot look up worker types for skip events");
                return;
            }
        };
        let at_ms = now_ms();
        for (subtask, worker_type) in skipped.iter().zip(types) {
            let event = SubtaskEvent {
                task: task.to_owned(),
                subtask: subtask.clone(),
                worker_type,
                attempt: 0,
                status: "skipped".into(),
                at_ms,
            };
            release::announce(&self.finisher.publisher, &event).await;
        }
    }

    async fn record(&self, result: &ResultMessage) -> Result<Recorded, ServiceError> {
        Ok(self
            .finisher
            .store
            .record_result(
                &result.task,
                &result.subtask,
                result.attempts,
                &result.outcome,
                &result.spawned,
                self.config.limits.max_subtasks,
            )
            .await?)
    }

    async fn handle_control(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let encoding =
            Encoding::from_content_type(amqp::property_str(delivery.properties.content_type()))?;
        let control: Control = encoding.decode(&delivery.data)?;
        let task = match &control {
            Control::Cancel { task, .. } | Control::Deadline { task } => task.clone(),
        };
        if let Err(error) = protocol::validate_task_id(&task) {
            return Ok(Disposition::Reject(error, None, None));
        }
        self.finisher.control(&control).await?;
        Ok(Disposition::Ack)
    }
}
