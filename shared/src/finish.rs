//! Ending a task: review rounds and synthesis under a lease, cancellation and deadlines, storing
//! the outcome once, and delivering it to every waiter, to `chorus.events`, to the parent of a
//! child task and (as cancellations) to the children of a finished one. Every step is safe to
//! repeat, so a redelivered message can always finish what a crashed process started.

use std::time::Duration;

use lapin::types::ShortString;
use rmpv::Value;

use std::collections::{HashMap, HashSet};

use crate::{
    amqp::{self, Outgoing, Publisher},
    config::{LimitArgs, OutcomeArgs},
    error::{ServiceError, StoreError},
    failpoint, graph,
    kinds::{self, Registry},
    protocol::{
        self, Control, Encoding, OnFailure, Outcome, OutcomeError, ParentRef, PlanEntry,
        ReplyTarget, ResolvedOptions, ResultMessage, Stats, Status, SubtaskOutcome,
    },
    release::{self, TaskContext},
    store::{
        now_ms, Finished, Lease, LeaseRequest, LeasedRun, Settled, SettledLease, Store, TaskKeys,
        TaskRecord, TaskState,
    },
    topology,
};

/// A settled task of up to this many results has them read with its lease, one round trip less
/// on the way to its outcome; larger ones are streamed from Redis in chunks.
const RESULTS_WITH_LEASE: usize = 1000;

/// Name under which synthesis runs are counted (see [`Store::begin_run`]).
const SYNTH_RUN: &str = "synth";

/// Counters of a task, as its outcome reports them.
fn stats_of(record: &TaskRecord) -> Stats {
    Stats {
        subtasks: record.total,
        succeeded: record.succeeded,
        failed: record.failed,
        retries: record.retries,
        duration_ms: now_ms().saturating_sub(record.created_ms),
        skipped: record.skipped,
        rounds: record.round,
    }
}

/// An outcome with no output and one task-level error.
fn failed_outcome(id: &str, status: Status, message: String, record: &TaskRecord) -> Outcome {
    Outcome {
        id: id.to_owned(),
        status,
        output: Value::Nil,
        errors: vec![OutcomeError {
            subtask: None,
            message,
        }],
        stats: stats_of(record),
    }
}

/// What synthesis decided.
enum Synthesis {
    /// The task is over.
    Outcome(Outcome),
    /// The review sent subtasks back: another round runs.
    NextRound,
}

/// Pause between looks at a task whose lease another process holds.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// Everything needed to end tasks.
#[derive(Clone)]
pub struct Finisher {
    /// Redis.
    pub store: Store,
    /// Confirm-mode publisher.
    pub publisher: Publisher,
    /// Kinds, for their synthesizers.
    pub registry: Registry,
    /// How long outcomes stay in Redis.
    pub outcome_ttl: Duration,
    /// Lease on synthesizing one task.
    pub lease: Duration,
    /// Synthesis runs that may start without finishing (crashing their process) before the
    /// task is failed.
    pub max_runs: u64,
    /// Largest message body the services accept.
    pub max_message_bytes: usize,
}

impl Finisher {
    /// A finisher with the outcome and poison settings of a service's flags.
    pub fn new(
        store: Store,
        publisher: Publisher,
        registry: Registry,
        outcomes: &OutcomeArgs,
        limits: &LimitArgs,
    ) -> Self {
        Self {
            store,
            publisher,
            registry,
            outcome_ttl: outcomes.outcome_ttl(),
            lease: outcomes.lease(),
            max_runs: limits.max_deliveries,
            max_message_bytes: limits.max_message_bytes(),
        }
    }

    /// Finishes task `id` if all its subtasks are settled; delivers a stored but undelivered
    /// outcome; does nothing otherwise. Waits while another process holds the task's lease.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn finish_if_settled(&self, id: &str) -> Result<(), ServiceError> {
        loop {
            let Some(record) = self.store.task(id).await? else {
                return Ok(());
            };
            if record.delivered {
                return Ok(());
            }
            let ready = record.state == TaskState::Finished
                || (matches!(record.state, TaskState::Planned | TaskState::Running)
                    && self.store.pending_count(id).await? == 0);
            if !ready {
                return Ok(());
            }
            // Delivery too happens under the lease, so that without a crash nobody gets the
            // outcome twice.
            if let Some(leased) = self.lease_synthesis(id).await? {
                return self.finish_then_release(id, leased).await;
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// [`Finisher::finish_if_settled`] for a caller that just saw nothing pending (the script
    /// that recorded the last result said so): straight to the lease, which comes with the
    /// task's record, its pending count and the synthesis run counted, in one round trip —
    /// or came with that script already (`lease`).
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn finish_settled(
        &self,
        id: &str,
        lease: Option<SettledLease>,
    ) -> Result<(), ServiceError> {
        let leased = match lease {
            Some(SettledLease::Taken(leased)) => Some(*leased),
            Some(SettledLease::Held) => None,
            None => self.lease_synthesis(id).await?,
        };
        match leased {
            Some(leased) => self.finish_then_release(id, leased).await,
            // Someone else is finishing it: wait for them the usual way.
            None => self.finish_if_settled(id).await,
        }
    }

    /// What the synthesis lease of task `id` is asked for: by [`Store::record_results`] (the
    /// `lease_key` is [`TaskKeys::synth_lease`]) and by this finisher.
    pub fn synthesis_lease<'a>(&self, lease_key: &'a str) -> LeaseRequest<'a> {
        LeaseRequest {
            key: lease_key,
            ttl: self.lease,
            run: SYNTH_RUN,
            results_up_to: RESULTS_WITH_LEASE,
        }
    }

    /// Gives back a synthesis lease taken for a synthesis that will not run now (the caller
    /// failed before it could start): its run is not counted against the task.
    pub async fn give_back(&self, id: &str, lease: Option<SettledLease>) {
        if let Some(SettledLease::Taken(leased)) = lease {
            leased.release_unstarted(id, SYNTH_RUN).await;
        }
    }

    /// Takes the task's synthesis lease with what synthesis reads first; `None` while another
    /// process holds it.
    async fn lease_synthesis(&self, id: &str) -> Result<Option<LeasedRun>, StoreError> {
        let lease_key = TaskKeys::new(id).synth_lease();
        self.store
            .lease_run(id, &self.synthesis_lease(&lease_key))
            .await
    }

    /// Finishes the task under the lease just taken, then gives the lease back.
    async fn finish_then_release(&self, id: &str, leased: LeasedRun) -> Result<(), ServiceError> {
        let LeasedRun {
            lease,
            record,
            runs,
            pending,
            settled,
        } = leased;
        let result = self
            .finish_leased(id, &lease, record, (runs, pending), settled)
            .await;
        lease.release_or_log(id).await;
        result
    }

    /// The task's record, pending count and run count were read as the lease was taken; the
    /// run is counted only for a task that is not finished, which is exactly when the synthesis
    /// below runs.
    async fn finish_leased(
        &self,
        id: &str,
        lease: &Lease,
        record: Option<TaskRecord>,
        (runs, pending): (Option<u64>, u64),
        preread: Option<Settled>,
    ) -> Result<(), ServiceError> {
        let Some(record) = record else {
            return Ok(());
        };
        if record.delivered {
            return Ok(());
        }
        // Checked under the lease: another synthesizer may have started a review round (more
        // pending subtasks) between the caller's look and this lease.
        let settled =
            matches!(record.state, TaskState::Planned | TaskState::Running) && pending == 0;
        if record.state != TaskState::Finished && !settled {
            if runs.is_some() {
                self.store.end_run(id, SYNTH_RUN).await?;
            }
            return Ok(());
        }
        if record.state != TaskState::Finished {
            let outcome = match runs {
                None => return Ok(()),
                Some(runs) if runs > self.max_runs => {
                    let message = format!(
                        "synthesis did not finish in {} runs: it may be crashing the synthesizer",
                        runs - 1
                    );
                    tracing::warn!(task = id, %message, "giving up on the synthesis");
                    failed_outcome(id, Status::Failed, message, &record)
                }
                Some(_) => match self.synthesize(id, record, lease, preread).await {
                    Ok(Synthesis::Outcome(outcome)) => outcome,
                    Ok(Synthesis::NextRound) => {
                        self.store.end_run(id, SYNTH_RUN).await?;
                        return Ok(());
                    }
                    Err(error) => {
                        self.store.end_run(id, SYNTH_RUN).await?;
                        return Err(error);
                    }
                },
            };
            // The run ends as the outcome is stored, in one round trip.
            let ((), finished) = tokio::try_join!(
                self.store.end_run(id, SYNTH_RUN),
                self.store.store_outcome(&outcome, self.outcome_ttl)
            )?;
            failpoint::hit("synthesizer.after-store-outcome").await;
            return self.deliver_finished(id, finished, Some(lease)).await;
        }
        self.deliver(id, Some(lease)).await
    }

    async fn synthesize(
        &self,
        id: &str,
        record: TaskRecord,
        lease: &Lease,
        preread: Option<Settled>,
    ) -> Result<Synthesis, ServiceError> {
        let options: ResolvedOptions = protocol::decode(&record.options)
            .map_err(|e| StoreError::Corrupt(format!("options of task {id}: {e}")))?;
        let (order, results) = match preread {
            Some(Settled { order, results }) => (order, results),
            None => tokio::try_join!(self.store.order(id), self.store.results(id))?,
        };
        let position: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, subtask)| (subtask.as_str(), i))
            .collect();
        let mut successes = Vec::new();
        let mut failures = Vec::new();
        for (subtask, stored) in results {
            match stored.outcome {
                SubtaskOutcome::Succeeded(bytes) => successes.push((subtask, bytes.into_vec())),
                SubtaskOutcome::Failed(message) => failures.push((subtask, message)),
                SubtaskOutcome::Skipped(message) => {
                    failures.push((subtask, format!("skipped: {message}")));
                }
            }
        }
        let rank = |subtask: &str| position.get(subtask).copied().unwrap_or(usize::MAX);
        successes.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
        failures.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
        let mut errors: Vec<OutcomeError> = failures
            .iter()
            .map(|(subtask, message)| OutcomeError {
                subtask: Some(subtask.clone()),
                message: message.clone(),
            })
            .collect();
        // Workers cut subtasks off at the deadline, so their failures may settle the task before
        // the deadline timer does: the outcome is the same either way.
        let deadline_passed = options
            .deadline_ms
            .filter(|&ms| now_ms() >= record.created_ms.saturating_add(ms));
        if let (Some(deadline_ms), false) = (deadline_passed, failures.is_empty()) {
            errors.insert(
                0,
                OutcomeError {
                    subtask: None,
                    message: format!("deadline exceeded ({deadline_ms} ms)"),
                },
            );
            return Ok(Synthesis::Outcome(Outcome {
                id: id.to_owned(),
                status: Status::Failed,
                output: Value::Nil,
                errors,
                stats: stats_of(&record),
            }));
        }
        let run_synthesis = failures.is_empty()
            || (options.on_failure == OnFailure::Continue && !successes.is_empty());
        if run_synthesis && record.round < options.max_rounds {
            match self.review(id, &record, &successes, &order, lease).await {
                Ok(true) => return Ok(Synthesis::NextRound),
                Ok(false) => {}
                Err(message) => {
                    return Ok(Synthesis::Outcome(failed_outcome(
                        id,
                        Status::Failed,
                        message,
                        &record,
                    )));
                }
            }
        }
        let (status, output) = if run_synthesis {
            match self.run_synthesis(&record, successes).await {
                Ok(output) if failures.is_empty() => (Status::Succeeded, output),
                Ok(output) => (Status::Partial, output),
                Err(message) => {
                    errors.push(OutcomeError {
                        subtask: None,
                        message,
                    });
                    (Status::Failed, Value::Nil)
                }
            }
        } else {
            let message = if successes.is_empty() && !failures.is_empty() {
                "every subtask failed".to_owned()
            } else {
                format!(
                    "{} of {} subtasks failed (on_failure: fail)",
                    failures.len(),
                    record.total
                )
            };
            errors.push(OutcomeError {
                subtask: None,
                message,
            });
            (Status::Failed, Value::Nil)
        };
        Ok(Synthesis::Outcome(Outcome {
            id: id.to_owned(),
            status,
            output,
            errors,
            stats: stats_of(&record),
        }))
    }

    /// Runs the kind's review of round `record.round`; when it sends subtasks back, records the
    /// next round and publishes what it releases. `Ok(true)` when another round runs.
    async fn review(
        &self,
        id: &str,
        record: &TaskRecord,
        outputs: &[(String, Vec<u8>)],
        order: &[String],
        lease: &Lease,
    ) -> Result<bool, String> {
        let Some(kind) = self.registry.get(&record.kind) else {
            return Err(format!(
                "kind {:?} is not registered in this synthesizer",
                record.kind
            ));
        };
        let (input, round) = (record.input.clone(), record.round);
        let inline = kind.inline() && outputs.len() <= kinds::INLINE_OUTPUTS;
        let outputs = outputs.to_vec();
        let reviewed = match kinds::run_kind_code(inline, move || {
            kind.review(&input, &outputs, round)
        })
        .await
        {
            Ok(Ok(reviewed)) => reviewed,
            Ok(Err(error)) => return Err(format!("review of round {round} failed: {error}")),
            Err(panic) => return Err(format!("review of round {round} panicked: {panic}")),
        };
        let Some(entries) = reviewed.filter(|entries| !entries.is_empty()) else {
            return Ok(false);
        };
        let existing: HashSet<String> = order.iter().cloned().collect();
        graph::check_additions(&entries, &existing)
            .map_err(|e| format!("review of round {round} returned a bad subtask: {e}"))?;
        tracing::info!(
            task = id,
            round,
            redo = entries.len(),
            "review sent subtasks back; next round"
        );
        let released = self
            .store
            .revise(id, lease, &entries)
            .await
            .map_err(|e| format!("cannot record round {}: {e}", round + 1))?;
        self.publish_released(id, record, round + 1, &released)
            .await
            .map_err(|e| format!("cannot publish round {}: {e}", round + 1))?;
        failpoint::hit("synthesizer.after-review-published").await;
        Ok(true)
    }

    /// Publishes subtasks a script released in review round `round`, then clears them from
    /// the outbox.
    ///
    /// # Errors
    /// Redis or the broker failed; the outbox keeps them for the next attempt.
    pub async fn publish_released(
        &self,
        id: &str,
        record: &TaskRecord,
        round: u32,
        released: &[PlanEntry],
    ) -> Result<(), ServiceError> {
        if released.is_empty() {
            return Ok(());
        }
        let options: ResolvedOptions = protocol::decode(&record.options)
            .map_err(|e| StoreError::Corrupt(format!("options of task {id}: {e}")))?;
        let context = TaskContext {
            task: id,
            kind: &record.kind,
            options: &options,
            created_ms: record.created_ms,
            max_message_bytes: self.max_message_bytes,
            round,
        };
        release::publish_entries(&self.store, &self.publisher, context, released).await?;
        self.store.clear_outbox(id, released).await?;
        Ok(())
    }

    /// Publishes what a crashed process released but did not publish (the outbox).
    ///
    /// # Errors
    /// Redis or the broker failed.
    pub async fn flush_outbox(&self, id: &str) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state == TaskState::Finished {
            return Ok(());
        }
        let released = self.store.outbox(id).await?;
        if !released.is_empty() {
            tracing::info!(
                task = id,
                subtasks = released.len(),
                "publishing subtasks released before a crash"
            );
        }
        // Read before the outbox: a round that began in between makes these look older than
        // they are, so their results count as duplicates (which flush again) and never as a
        // later round's.
        self.publish_released(id, &record, record.round, &released)
            .await
    }

    /// Ends a task that is not finished with `status` and one task-level error (a cancel, a
    /// passed deadline, a spawn limit), keeping the stats so far, and delivers it.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn stop(
        &self,
        id: &str,
        status: Status,
        message: String,
    ) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state != TaskState::Finished {
            tracing::info!(task = id, status = status.as_str(), %message, "stopping task");
            let outcome = failed_outcome(id, status, message, &record);
            let finished = self.store.store_outcome(&outcome, self.outcome_ttl).await?;
            return self.deliver_finished(id, finished, None).await;
        }
        if record.delivered {
            return Ok(());
        }
        self.deliver(id, None).await
    }

    /// Handles a control message.
    ///
    /// # Errors
    /// Redis or the broker failed.
    pub async fn control(&self, control: &Control) -> Result<(), ServiceError> {
        match control {
            Control::Cancel { task, reason } => {
                let message = reason
                    .clone()
                    .unwrap_or_else(|| "cancelled on request".to_owned());
                self.stop(task, Status::Cancelled, message).await
            }
            Control::Deadline { task } => self.check_deadline(task).await,
        }
    }

    /// Fails the task if its deadline passed; otherwise sets the next timer.
    async fn check_deadline(&self, id: &str) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state == TaskState::Finished {
            return Ok(());
        }
        let options: ResolvedOptions = protocol::decode(&record.options)
            .map_err(|e| StoreError::Corrupt(format!("options of task {id}: {e}")))?;
        let Some(deadline_ms) = options.deadline_ms else {
            return Ok(());
        };
        let due = record.created_ms.saturating_add(deadline_ms);
        if now_ms() >= due {
            let message = format!("deadline exceeded ({deadline_ms} ms)");
            return self.stop(id, Status::Failed, message).await;
        }
        arm_deadline(&self.publisher, id, due).await
    }

    async fn run_synthesis(
        &self,
        record: &TaskRecord,
        outputs: Vec<(String, Vec<u8>)>,
    ) -> Result<Value, String> {
        let Some(kind) = self.registry.get(&record.kind) else {
            return Err(format!(
                "kind {:?} is not registered in this synthesizer",
                record.kind
            ));
        };
        let input = record.input.clone();
        let inline = kind.inline() && outputs.len() <= kinds::INLINE_OUTPUTS;
        match kinds::run_kind_code(inline, move || kind.synthesize(&input, outputs)).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(format!("synthesis failed: {error}")),
            Err(panic) => Err(format!("synthesis panicked: {panic}")),
        }
    }

    /// Stores `outcome` for a task that ends without running (rejected), then delivers it.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn conclude(&self, outcome: &Outcome) -> Result<(), ServiceError> {
        let finished = self.store.store_outcome(outcome, self.outcome_ttl).await?;
        self.deliver_finished(&outcome.id, finished, None).await
    }

    /// Publishes the stored outcome to every waiter and as an event, then marks it delivered,
    /// giving back the synthesis `lease` it ran under in the same round trip.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe (waiters may then get a second,
    /// identical copy).
    pub async fn deliver(&self, id: &str, lease: Option<&Lease>) -> Result<(), ServiceError> {
        match self.store.finished_task(id).await? {
            Some(finished) => self.deliver_finished(id, finished, lease).await,
            None => Ok(()),
        }
    }

    /// [`Finisher::deliver`] of what storing the outcome returned.
    async fn deliver_finished(
        &self,
        id: &str,
        finished: Finished,
        lease: Option<&Lease>,
    ) -> Result<(), ServiceError> {
        let Finished {
            outcome,
            waiters,
            parent,
            children,
        } = finished;
        let event = protocol::encode(&outcome)?;
        let replies: Vec<(&ReplyTarget, Encoding, Vec<u8>)> = waiters
            .iter()
            .map(|waiter| {
                let (encoding, body) = encode_reply(waiter, &outcome, &event);
                (waiter, encoding, body)
            })
            .collect();
        let routing_key = format!("task.{}", outcome.status.as_str());
        let messages = replies
            .iter()
            .map(|(waiter, encoding, body)| reply_message(waiter, *encoding, body))
            .chain(std::iter::once(Outgoing {
                exchange: topology::EVENTS_EXCHANGE,
                routing_key: &routing_key,
                body: &event,
                properties: amqp::persistent(protocol::MSGPACK)
                    .with_message_id(ShortString::from(short_id(id))),
                mandatory: false,
            }));
        self.publisher.publish_all(messages).await?;
        if let Some(parent) = parent {
            self.report_to_parent(id, &parent, &outcome).await?;
        }
        self.cancel_children(id, &children, &outcome).await?;
        self.store.mark_delivered(id, lease).await?;
        tracing::info!(
            task = id,
            status = outcome.status.as_str(),
            subtasks = outcome.stats.subtasks,
            failed = outcome.stats.failed,
            retries = outcome.stats.retries,
            duration_ms = outcome.stats.duration_ms,
            waiters = waiters.len(),
            "task finished"
        );
        Ok(())
    }

    /// A child task's outcome becomes the result of its parent's subtask.
    async fn report_to_parent(
        &self,
        id: &str,
        parent: &[u8],
        outcome: &Outcome,
    ) -> Result<(), ServiceError> {
        let parent: ParentRef = protocol::decode(parent)
            .map_err(|e| StoreError::Corrupt(format!("parent of task {id}: {e}")))?;
        let result = match outcome.status {
            Status::Succeeded | Status::Partial => SubtaskOutcome::Succeeded(
                serde_bytes::ByteBuf::from(protocol::encode(&outcome.output)?),
            ),
            status => {
                let reasons: Vec<&str> =
                    outcome.errors.iter().map(|e| e.message.as_str()).collect();
                SubtaskOutcome::Failed(format!(
                    "child task {id} {}: {}",
                    status.as_str(),
                    reasons.join("; ")
                ))
            }
        };
        let result = ResultMessage {
            task: parent.task,
            subtask: parent.subtask,
            attempts: 1,
            outcome: result,
            spawned: Vec::new(),
            round: parent.round,
        };
        release::publish_result(&self.publisher, &result).await
    }

    /// A finished task's unfinished children are cancelled: their work no longer matters.
    async fn cancel_children(
        &self,
        id: &str,
        children: &[String],
        outcome: &Outcome,
    ) -> Result<(), ServiceError> {
        if children.is_empty() {
            return Ok(());
        }
        let reason = format!("parent task {id} ended {}", outcome.status.as_str());
        let bodies = children
            .iter()
            .map(|child| {
                protocol::encode(&Control::Cancel {
                    task: child.clone(),
                    reason: Some(reason.clone()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher
            .publish_all(bodies.iter().map(|body| Outgoing {
                exchange: "",
                routing_key: topology::CONTROL_QUEUE,
                body,
                properties: amqp::persistent(protocol::MSGPACK),
                mandatory: true,
            }))
            .await?;
        Ok(())
    }

    /// Publishes an outcome to one waiter only (a duplicate submission of a finished task).
    ///
    /// # Errors
    /// The broker failed.
    pub async fn reply(&self, waiter: &ReplyTarget, outcome: &Outcome) -> Result<(), ServiceError> {
        let msgpack = protocol::encode(outcome)?;
        let (encoding, body) = encode_reply(waiter, outcome, &msgpack);
        self.publisher
            .publish(reply_message(waiter, encoding, &body))
            .await?;
        Ok(())
    }
}

/// Sets a timer that brings task `id` back to the synthesizer at `due` (ms since the epoch),
/// hopping through the delay buckets (at most a minute each) until then.
///
/// # Errors
/// The broker failed.
pub async fn arm_deadline(publisher: &Publisher, id: &str, due: u64) -> Result<(), ServiceError> {
    let wait = Duration::from_millis(due.saturating_sub(now_ms()).max(1))
        .min(Duration::from_millis(topology::MIN_DELAY_COVERAGE_MS));
    let body = protocol::encode(&Control::Deadline {
        task: id.to_owned(),
    })?;
    publisher
        .publish(Outgoing {
            exchange: topology::DELAY_EXCHANGE,
            routing_key: topology::CONTROL_QUEUE,
            body: &body,
            properties: topology::delayed(amqp::persistent(protocol::MSGPACK), wait),
            mandatory: true,
        })
        .await?;
    Ok(())
}

/// The outcome in the waiter's encoding — or in MessagePack (`msgpack`, already encoded) when
/// JSON cannot carry it (a kind's output with non-string map keys, say): the waiter still gets
/// its outcome, with a `content_type` saying how to read it.
fn encode_reply(waiter: &ReplyTarget, outcome: &Outcome, msgpack: &[u8]) -> (Encoding, Vec<u8>) {
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

/// Publishes a `rejected` outcome straight to a submitter, for a request that is not a task at
/// all (it is not stored: its id, if any, cannot be trusted).
///
/// # Errors
/// The broker failed.
pub async fn reply_rejected(
    publisher: &Publisher,
    waiter: &ReplyTarget,
    id: &str,
    reason: &str,
) -> Result<(), ServiceError> {
    let outcome = Outcome::rejected(id, reason);
    let msgpack = protocol::encode(&outcome)?;
    let (encoding, body) = encode_reply(waiter, &outcome, &msgpack);
    publisher
        .publish(reply_message(waiter, encoding, &body))
        .await?;
    Ok(())
}

fn reply_message<'a>(waiter: &'a ReplyTarget, encoding: Encoding, body: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        exchange: "",
        routing_key: &waiter.reply_to,
        body,
        properties: amqp::persistent(encoding.content_type())
            .with_correlation_id(ShortString::from(short_id(&waiter.correlation_id))),
        mandatory: false,
    }
}

/// An id cut to the 255 bytes an AMQP short string holds (task ids are at most 200 bytes; a
/// third party's correlation id came in a short string, so this never cuts in practice).
fn short_id(id: &str) -> String {
    let mut end = id.len().min(255);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_owned()
}

/// The text of a panic, for an error message.
pub fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => kinds::panic_text(payload.as_ref()),
        Err(join) => join.to_string(),
    }
}

/// Reply target of a request, from its `reply_to` and `correlation_id` properties.
pub fn reply_target(
    properties: &lapin::BasicProperties,
    task_id: &str,
    encoding: Encoding,
) -> Option<ReplyTarget> {
    let reply_to = amqp::property_str(properties.reply_to())?;
    let correlation_id = amqp::property_str(properties.correlation_id()).unwrap_or(task_id);
    Some(ReplyTarget {
        reply_to: reply_to.to_owned(),
        correlation_id: correlation_id.to_owned(),
        encoding,
    })
}
