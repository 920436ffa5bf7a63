//! The synthesizer: takes settled subtasks from `chorus.results`, records each exactly once in
//! Redis (an atomic script that is a no-op for duplicates) together with what it spawned,
//! publishes the subtasks that this releases (dependencies met, a slot under the cap), and when
//! a task has nothing left pending, reviews, synthesizes and delivers its outcome. It also
//! serves `chorus.control`: cancellations and deadline timers.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use chorus_shared::{
    amqp::{self, DeadLetter},
    clock::now_ms,
    config::{ConnectArgs, KindsArgs, LimitArgs, LogArgs, OutcomeArgs, ShutdownArgs},
    consume::{self, check_size, ConsumeConfig, Disposition, ServiceSpec, Session},
    error::{ProtocolError, ServiceError},
    failpoint,
    finish::Finisher,
    graph,
    kinds::Registry,
    observe,
    protocol::{
        self, Control, Encoding, ResultBatch, ResultMessage, Status, SubtaskEvent, SubtaskOutcome,
    },
    publish,
    services::{self, Announcement, Announcer, Directory, Role},
    store::{
        LeaseRequest, Recorded, Released, ResultStatus, SettledLease, Store, TaskKeys, TaskRecord,
    },
    sweep::{self, RepairSettings, SweepArgs},
    text, topology,
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
                  It also consumes chorus.control (cancellations, deadline timers), and one \
                  synthesizer at a time sweeps for tasks stuck without progress and repairs \
                  them (a subtask dead-lettered by the broker is settled as failed, one whose \
                  message is in no queue is published again). Several may run side by side."
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
    #[command(flatten)]
    pub http: observe::HttpArgs,
    #[command(flatten)]
    pub kinds: KindsArgs,
    #[command(flatten)]
    pub sweep: SweepArgs,

    /// Result messages handled at once (also the prefetch). Handling one is mostly waiting on
    /// one Redis script, so a high bound costs little and keeps the results queue drained at
    /// the broker's rate; each held message takes its size in memory (up to
    /// --max-message-bytes).
    #[arg(long, env = "CHORUS_SYNTHESIZER_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Threads of the async runtime: 1 (the default) runs the synthesizer's own work on one
    /// thread, saving hand-offs between threads on every result; 0 for one per core. Reviews
    /// and syntheses run on a separate blocking pool either way, except those of kinds that
    /// declare themselves `INLINE` (pure computation) over at most 1,000 outputs.
    #[arg(long, env = "CHORUS_SYNTHESIZER_THREADS", default_value_t = 1)]
    pub threads: u16,
}

impl Config {
    /// Checks what clap cannot check one flag at a time: both URLs parse
    /// ([`ConnectArgs::validate`]).
    ///
    /// # Errors
    /// The first URL that does not parse, as one line for the user (password hidden).
    pub fn validate(&self) -> Result<(), String> {
        self.http.listen(observe::SYNTHESIZER_LISTEN)?;
        self.connect.validate()
    }
}

chorus_shared::service_config!(Config);

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
    observe::serve(&config.http, observe::SYNTHESIZER_LISTEN, shutdown.clone())?;
    let store = Store::connect_service(&config.connect).await?;
    registry.attach_store(&store);
    observe::health::attach_store(&store);
    tracing::info!(kinds = ?registry.names(), "synthesizer starting");
    let instance = services::instance_id();
    let directory = Arc::new(Directory::new(store.clone(), instance.clone(), &registry));
    let owner = instance.clone();
    let announcer = Announcer::start(
        store.clone(),
        instance,
        Announcement::of(Role::Synthesizer, &registry, Vec::new()),
    )
    .await?;
    // One synthesizer at a time sweeps for stuck tasks (a lease in Redis).
    let sweeper = tokio::spawn(sweep::run(
        store.clone(),
        config.sweep.clone(),
        RepairSettings {
            connect: config.connect.clone(),
            max_message_bytes: config.limits.max_message_bytes(),
        },
        owner,
        shutdown.clone(),
    ));
    let spec = ServiceSpec::new(
        "chorus-synthesizer",
        &config.connect,
        topology::RESULTS_QUEUE,
        config.concurrency,
        config.shutdown.grace(),
        topology::NO_RETRY_DELAY,
    )
    .consuming(ConsumeConfig {
        queue: topology::CONTROL_QUEUE.to_owned(),
        prefetch: CONTROL_CONCURRENCY,
        concurrency: usize::from(CONTROL_CONCURRENCY),
        grace: config.shutdown.grace(),
        worker_type: None,
    });
    let served = consume::serve(spec, shutdown, |session: &Session, queue: &str| {
        let synthesizer = Arc::new(Synthesizer {
            finisher: Finisher::new(
                store.clone(),
                session.publisher.clone(),
                registry.clone(),
                &config.outcomes,
                &config.limits,
            )
            .with_directory(Arc::clone(&directory)),
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
    announcer.stop().await;
    sweeper.abort();
    served?;
    tracing::info!("synthesizer stopped");
    Ok(())
}

/// A result that cannot be recorded, and why.
type Refused = (ResultMessage, ProtocolError);

/// What a task needs once its results are recorded and followed up.
enum Next {
    /// Nothing is pending: synthesize and deliver.
    Finish,
    /// The task was finished already: deliver the outcome if that was interrupted.
    Deliver,
    /// Nothing more now.
    Nothing,
}

/// Where a task stands once results are recorded.
struct Progress {
    /// Unsettled subtasks left.
    remaining: u64,
    /// Subtasks the results released, to publish.
    released: Released,
    /// Subtasks settled as skipped because a result failed, to announce.
    skipped: Vec<String>,
}

/// What the statuses of one recording call for, beyond the results recorded.
#[derive(Debug, Default)]
struct Triage {
    /// Results whose spawned work conflicts, to record again as plain failures.
    conflicts: Vec<ResultMessage>,
    /// Why the task is over its subtask limit (`max_subtasks`, `--max-subtasks`), for the
    /// first result that would take it there: the task then fails.
    too_many: Option<String>,
    /// Whether a result was recorded before (its first copy may have died before publishing
    /// what it released).
    duplicate: bool,
}

/// Checks that `control` came the way its publisher may send it: a cancel only when it was
/// published straight to `chorus.control`, through `chorus.submit` (submitters) or the default
/// exchange (the services cancelling child tasks, and clients of earlier versions); `exchange`
/// is the delivery's, empty for the default exchange. A cancel that came through any other
/// exchange — `chorus.retry`, which the delay queues lead to, and which a worker's broker user
/// can reach by publishing a "retry" to `chorus.delay` — is refused, so cancelling stays with
/// whoever may write to `chorus.submit` or the default exchange, neither of which a worker may
/// (the trust model of docs/security.md). Deadline timers take the delay path by design and
/// only make the synthesizer compare a task with its own deadline, so they are accepted from
/// anywhere.
///
/// # Errors
/// [`ProtocolError::Invalid`] naming the rule, for a cancel that came through another exchange.
fn check_control_route(control: &Control, exchange: &str) -> Result<(), ProtocolError> {
    match control {
        Control::Cancel { .. } if !exchange.is_empty() && exchange != topology::SUBMIT_EXCHANGE => {
            Err(ProtocolError::Invalid(format!(
                "a cancel is honoured only when published to {} through {} or the default exchange; this one came through {}",
                topology::CONTROL_QUEUE,
                topology::SUBMIT_EXCHANGE,
                text::quoted(exchange)
            )))
        }
        _ => Ok(()),
    }
}

/// Sorts `results` by the `statuses` recording gave them (in the same order); results for
/// subtasks the task does not have go to `refused`.
fn triage(
    results: Vec<ResultMessage>,
    statuses: Vec<ResultStatus>,
    max_subtasks: u64,
    refused: &mut Vec<Refused>,
) -> Triage {
    let mut triage = Triage::default();
    for (result, status) in results.into_iter().zip(statuses) {
        match status {
            ResultStatus::New => {}
            ResultStatus::Duplicate => triage.duplicate = true,
            ResultStatus::TooManySubtasks { would_have } => {
                triage.too_many.get_or_insert(format!(
                    "spawn limit exceeded: subtask {} would bring the task to {would_have} subtasks; the limit is {max_subtasks} (--max-subtasks)",
                    result.subtask
                ));
            }
            ResultStatus::SpawnConflict { reason } => {
                triage.conflicts.push(ResultMessage {
                    outcome: SubtaskOutcome::Failed(reason),
                    spawned: Vec::new(),
                    ..result
                });
            }
            ResultStatus::UnknownSubtask => {
                let error = ProtocolError::Invalid(format!(
                    "task {:?} has no subtask {:?}",
                    result.task, result.subtask
                ));
                refused.push((result, error));
            }
        }
    }
    triage
}

impl Synthesizer {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let batched =
            amqp::property_str(delivery.properties.kind()) == Some(protocol::RESULT_BATCH_TYPE);
        let results: Vec<ResultMessage> = if batched {
            protocol::decode::<ResultBatch>(&delivery.data)?.results
        } else {
            vec![protocol::decode(&delivery.data)?]
        };
        let mut refused: Vec<Refused> = Vec::new();
        // Grouped by task, in order: one script call records a task's share of the message.
        let mut by_task: Vec<(String, Vec<ResultMessage>)> = Vec::new();
        for result in results {
            if let Err(error) = protocol::validate_task_id(&result.task) {
                refused.push((result, error));
                continue;
            }
            match by_task.iter_mut().find(|(task, _)| *task == result.task) {
                Some((_, group)) => group.push(result),
                None => by_task.push((result.task.clone(), vec![result])),
            }
        }
        for (task, results) in by_task {
            self.record_task_results(&task, results, &mut refused)
                .await?;
        }
        if !batched {
            if let Some((result, error)) = refused.pop() {
                let task = protocol::validate_task_id(&result.task)
                    .is_ok()
                    .then_some(result.task);
                return Ok(Disposition::Reject {
                    error,
                    task,
                    subtask: Some(result.subtask),
                });
            }
            return Ok(Disposition::Ack);
        }
        // In a batch, only the bad results go to chorus.dead, each as a message of its own.
        for (result, error) in refused {
            let reason = error.to_string();
            // Both ids may be what made the result bad: bounded and escaped like the reason.
            tracing::warn!(task = %text::bounded(&result.task, text::MAX_NAME_BYTES), subtask = %text::bounded(&result.subtask, text::MAX_NAME_BYTES), reason = %text::reason(&reason), "result in a batch dead-lettered to chorus.dead");
            amqp::dead_letter(
                &self.finisher.publisher,
                &protocol::encode(&result)?,
                &amqp::persistent(protocol::MSGPACK),
                DeadLetter {
                    source_queue: topology::RESULTS_QUEUE,
                    reason: &reason,
                    task: Some(&result.task),
                    subtask: Some(&result.subtask),
                },
            )
            .await?;
        }
        Ok(Disposition::Ack)
    }

    /// Records results of one task, publishes what they release, and finishes the task when
    /// nothing is left pending. Results that cannot be recorded go to `refused`.
    async fn record_task_results(
        &self,
        task: &str,
        mut results: Vec<ResultMessage>,
        refused: &mut Vec<Refused>,
    ) -> Result<(), ServiceError> {
        let limit = self.config.limits.max_spawn_depth;
        for result in &results {
            if let Some(deepest) = result.spawned.iter().map(|entry| entry.depth).max() {
                if deepest > limit {
                    let message = format!(
                        "spawn limit exceeded: subtask {} spawned work at depth {deepest}; the limit is {limit} (--max-spawn-depth)",
                        result.subtask
                    );
                    return self.finisher.stop(task, Status::Failed, message).await;
                }
            }
        }
        for result in &mut results {
            if let Err(reason) = graph::check_spawned(&result.spawned) {
                result.outcome = SubtaskOutcome::Failed(format!("spawned a bad subtask: {reason}"));
                result.spawned.clear();
            }
        }
        let lease_key = TaskKeys::new(task).synth_lease();
        let settle_lease = self.finisher.synthesis_lease(&lease_key);
        let (recorded, lease) = self.record(task, &results, Some(&settle_lease)).await?;
        // A lease these results acquired is released unless the synthesis runs now.
        let next = match self.follow_up(task, results, recorded, refused).await {
            Ok(next) => next,
            Err(error) => {
                self.finisher.release_unstarted(task, lease).await;
                return Err(error);
            }
        };
        match next {
            Next::Finish => self.finisher.finish_settled(task, lease).await,
            Next::Deliver => {
                self.finisher.release_unstarted(task, lease).await;
                self.finisher.finish_if_settled(task).await
            }
            Next::Nothing => {
                self.finisher.release_unstarted(task, lease).await;
                Ok(())
            }
        }
    }

    /// Acts on what recording said: stops a task over its subtask limit, records spawn
    /// conflicts as failures, announces skipped dependents and publishes released subtasks.
    async fn follow_up(
        &self,
        task: &str,
        results: Vec<ResultMessage>,
        recorded: Recorded,
        refused: &mut Vec<Refused>,
    ) -> Result<Next, ServiceError> {
        let progress = match recorded {
            Recorded::TaskFinished => return Ok(Next::Deliver),
            Recorded::UnknownTask => {
                for result in results {
                    let error = ProtocolError::Invalid(format!(
                        "result for unknown task {:?}",
                        result.task
                    ));
                    refused.push((result, error));
                }
                return Ok(Next::Nothing);
            }
            Recorded::Batch {
                statuses,
                remaining,
                released,
                skipped,
            } => {
                let max_subtasks = self.config.limits.max_subtasks;
                let triage = triage(results, statuses, max_subtasks, refused);
                if let Some(message) = triage.too_many {
                    self.finisher.stop(task, Status::Failed, message).await?;
                    return Ok(Next::Nothing);
                }
                if triage.duplicate {
                    // The first copy may have died between releasing and publishing.
                    self.finisher.flush_outbox(task).await?;
                }
                let progress = Progress {
                    remaining,
                    released,
                    skipped,
                };
                self.settle_conflicts(task, triage.conflicts, progress)
                    .await?
            }
        };
        failpoint::hit("synthesizer.after-record").await;
        self.publish_progress(task, &progress).await?;
        Ok(if progress.remaining == 0 {
            Next::Finish
        } else {
            Next::Nothing
        })
    }

    /// Records `conflicts` (results whose spawned work conflicts) as plain failures instead,
    /// which records nothing spawned, and adds what that settles to `progress`.
    async fn settle_conflicts(
        &self,
        task: &str,
        conflicts: Vec<ResultMessage>,
        mut progress: Progress,
    ) -> Result<Progress, ServiceError> {
        if conflicts.is_empty() {
            return Ok(progress);
        }
        match self.record(task, &conflicts, None).await?.0 {
            Recorded::Batch {
                remaining,
                released,
                skipped,
                ..
            } => {
                progress.remaining = remaining;
                progress.released.extend(released);
                progress.skipped.extend(skipped);
            }
            Recorded::TaskFinished | Recorded::UnknownTask => {}
        }
        Ok(progress)
    }

    /// Announces the dependents `progress` skipped and publishes the subtasks it released.
    async fn publish_progress(&self, task: &str, progress: &Progress) -> Result<(), ServiceError> {
        let Progress {
            released, skipped, ..
        } = progress;
        if skipped.is_empty() && released.is_empty() {
            return Ok(());
        }
        let Some(record) = self.finisher.store.task(task).await? else {
            return Ok(());
        };
        if !skipped.is_empty() {
            tracing::info!(
                task,
                skipped = skipped.len(),
                "dependents skipped after a failure"
            );
            self.announce_skipped(task, &record, skipped).await;
        }
        self.finisher
            .publish_released(task, &record, record.round, released)
            .await
    }

    /// Publishes `subtask.skipped` events when the task asked for subtask events.
    async fn announce_skipped(&self, task: &str, record: &TaskRecord, skipped: &[String]) {
        let wants_events = record
            .resolved_options(task)
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
            publish::announce(&self.finisher.publisher, &event).await;
        }
    }

    async fn record(
        &self,
        task: &str,
        results: &[ResultMessage],
        settle_lease: Option<&LeaseRequest<'_>>,
    ) -> Result<(Recorded, Option<SettledLease>), ServiceError> {
        let results: Vec<&ResultMessage> = results.iter().collect();
        Ok(self
            .finisher
            .store
            .record_results(
                task,
                &results,
                self.config.limits.max_subtasks,
                settle_lease,
            )
            .await?)
    }

    async fn handle_control(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        check_size(delivery, self.config.limits.max_message_bytes())?;
        let encoding =
            Encoding::from_content_type(amqp::property_str(delivery.properties.content_type()))?;
        let control: Control = encoding.decode(&delivery.data)?;
        let task = match &control {
            Control::Cancel { task, .. }
            | Control::Deadline { task }
            | Control::Settle { task, .. } => task.clone(),
        };
        if let Err(error) = protocol::validate_task_id(&task) {
            return Ok(Disposition::Reject {
                error,
                task: None,
                subtask: None,
            });
        }
        if let Err(error) = check_control_route(&control, delivery.exchange.as_str()) {
            return Ok(Disposition::Reject {
                error,
                task: Some(task),
                subtask: None,
            });
        }
        self.finisher.control(&control).await?;
        Ok(Disposition::Ack)
    }
}
