//! The orchestrator: takes tasks from `chorus.tasks`, validates them, plans them with their
//! kind's planner, checks the plan as a graph, records it in Redis and publishes the first wave
//! (subtasks without dependencies, up to the task's concurrency cap) to their worker types'
//! queues with confirms, acking a task only once that wave is confirmed. Later waves are
//! released by the synthesizer as results settle.

mod plan;
mod rollout;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use chorus_shared::{
    amqp::{self, reply_target},
    config::{
        self, ConnectArgs, FileArgs, KindsArgs, LimitArgs, LogArgs, OutcomeArgs, ShutdownArgs,
    },
    consume::{self, check_size, Disposition, ServiceSpec, Session},
    error::{ProtocolError, ServiceError},
    failpoint,
    finish::{arm_deadline, Finisher},
    graph::{self, FirstWave},
    kinds::{self, Registry, TaskView},
    observe::{self, metrics},
    protocol::{
        self, Encoding, Outcome, ParentRef, PlanEntry, RawInput, ReplyTarget, ResolvedOptions,
        TaskRequest,
    },
    publish::{self, TaskContext},
    services::{self, Announcement, Announcer, Directory, Role},
    store::{
        Claim, Lease, LeaseRequest, Planning, Store, Submission, TaskKeys, TaskRecord, TaskState,
        CHUNK, PLAN_RUN,
    },
    text, topology,
    usage::{self, Budget, Usage, UsageMeter},
};
use clap::Parser;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;

/// Flags of `chorus-orchestrator`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "chorus-orchestrator",
    version,
    about = "Chorus orchestrator: plans tasks from chorus.tasks into subtasks and publishes them.",
    long_about = "Chorus orchestrator: consumes tasks from the chorus.tasks queue, validates them, \
                  calls their kind's planner, checks the plan (ids, worker types, dependencies, \
                  cycles), records it in Redis and publishes the first wave of subtasks to their \
                  worker type's queue (chorus.subtasks, chorus.subtasks.<type>) with publisher \
                  confirms. A task is acked only when its first wave is confirmed; after a crash \
                  the redelivered task resumes publishing where the confirmed prefix ends. Run \
                  any number of them."
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
    pub files: FileArgs,

    /// Tasks planned and published at once by this process (also its prefetch).
    #[arg(long, env = "CHORUS_ORCHESTRATOR_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Subtasks published per batch; the batch's confirms are awaited together and then the
    /// confirmed prefix is saved in Redis (one Redis write per batch; a crash republishes at
    /// most one batch, as duplicates that change nothing).
    #[arg(long, env = "CHORUS_PUBLISH_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub publish_batch: u64,

    /// Retry delays go up to this, so the delay queues are declared up to it (keep equal to
    /// the workers' --retry-max-delay-ms).
    #[arg(long, env = "CHORUS_RETRY_MAX_DELAY_MS", default_value_t = config::DEFAULT_RETRY_MAX_DELAY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,

    /// Threads of the async runtime: 1 (the default) runs the orchestrator's own work on one
    /// thread, saving hand-offs between threads on every task; 0 for one per core. Planners run
    /// on a separate blocking pool either way, except small plans of kinds that declare
    /// themselves `INLINE` (pure computation).
    #[arg(long, env = "CHORUS_ORCHESTRATOR_THREADS", default_value_t = 1)]
    pub threads: u16,
}

impl Config {
    /// Checks what clap cannot check one flag at a time: both URLs parse
    /// ([`ConnectArgs::validate`]), and every `--file-root` is a directory ([`FileArgs::roots`]).
    ///
    /// # Errors
    /// The first URL that does not parse (password hidden) or root that cannot be opened, as
    /// one line for the user.
    pub fn validate(&self) -> Result<(), String> {
        self.http.listen(observe::ORCHESTRATOR_LISTEN)?;
        self.connect.validate()?;
        self.files.roots().map(drop)
    }
}

chorus_shared::service_config!(Config);

struct Orchestrator {
    config: Config,
    registry: Registry,
    finisher: Finisher,
    /// The other live services' announcements, for requests of kinds this one lacks.
    directory: Arc<Directory>,
}

/// Runs the orchestrator until `shutdown` is cancelled.
///
/// # Errors
/// Redis cannot be reached at start-up.
pub async fn run(
    config: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    observe::serve(&config.http, observe::ORCHESTRATOR_LISTEN, shutdown.clone())?;
    let store = Store::connect_service(&config.connect).await?;
    registry.attach_store(&store);
    observe::health::attach_store(&store);
    tracing::info!(kinds = ?registry.names(), "orchestrator starting");
    let instance = services::instance_id();
    let directory = Arc::new(Directory::new(store.clone(), instance.clone(), &registry));
    let announcer = Announcer::start(
        store.clone(),
        instance,
        Announcement::of(Role::Orchestrator, &registry, Vec::new()),
    )
    .await?;
    let spec = ServiceSpec::new(
        "chorus-orchestrator",
        &config.connect,
        topology::TASKS_QUEUE,
        config.concurrency,
        config.shutdown.grace(),
        Duration::from_millis(config.retry_max_delay_ms),
    );
    let served = consume::serve(spec, shutdown, |session: &Session, _queue: &str| {
        let orchestrator = Arc::new(Orchestrator {
            finisher: Finisher::new(
                store.clone(),
                session.publisher.clone(),
                registry.clone(),
                &config.outcomes,
                &config.limits,
            )
            .with_directory(Arc::clone(&directory)),
            config: config.clone(),
            registry: registry.clone(),
            directory: Arc::clone(&directory),
        });
        move |delivery: Arc<Delivery>| {
            let orchestrator = Arc::clone(&orchestrator);
            async move { orchestrator.handle(&delivery).await }
        }
    })
    .await;
    announcer.stop().await;
    served?;
    tracing::info!("orchestrator stopped");
    Ok(())
}

/// A request that is not a runnable task: it is answered `rejected` and dead-lettered.
struct Refusal {
    id: String,
    error: ProtocolError,
}

/// How often a task planned by another orchestrator (or by a twin delivery) is looked at,
/// waiting for that planning to finish or for its lease to lapse.
const PLANNING_ELSEWHERE_POLL: Duration = Duration::from_millis(200);

/// Room kept in a subtask message for all but its payload (ids, kind, options, framing): a
/// payload must leave this many bytes of the message limit free.
const SUBTASK_ENVELOPE_BYTES: usize = 1024;

/// A first delivery's planner run, made before its claim.
#[derive(Default)]
struct Ahead {
    /// The checked plan, when the planner gave one that passes the checks.
    entries: Option<Vec<PlanEntry>>,
    /// Why the task is rejected, when the planner refused it or its plan failed the checks:
    /// the claim then rejects it without running the planner again.
    refused: Option<String>,
    /// What the planner's model calls used, paid either way: counted with the plan or the
    /// rejection written under the plan lease.
    usage: Vec<Usage>,
}

impl Orchestrator {
    async fn handle(&self, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        let properties = &delivery.properties;
        let encoding = Encoding::from_content_type(amqp::property_str(properties.content_type()));
        let fallback_id = amqp::property_str(properties.message_id())
            .or(amqp::property_str(properties.correlation_id()))
            .unwrap_or("")
            .to_owned();
        let parsed = encoding
            .map_err(|error| Refusal {
                id: fallback_id.clone(),
                error,
            })
            .and_then(|encoding| {
                self.parse(delivery, encoding)
                    .map(|(id, request)| (id, request, encoding))
            });
        match parsed {
            Ok((_, request, _)) if self.deferred(&request.kind, delivery).await? => {
                Ok(Disposition::Ack)
            }
            Ok((id, request, encoding)) => self.run_task(delivery, id, request, encoding).await,
            Err(refusal) => {
                let encoding =
                    Encoding::from_content_type(amqp::property_str(properties.content_type()))
                        .unwrap_or(Encoding::Msgpack);
                self.refuse(delivery, encoding, refusal).await
            }
        }
    }

    /// Answers a request that is not a runnable task: `rejected` to its submitter when it
    /// waits for a reply, and the message dead-lettered (with the task id, when it has one).
    async fn refuse(
        &self,
        delivery: &Delivery,
        encoding: Encoding,
        refusal: Refusal,
    ) -> Result<Disposition, ServiceError> {
        if let Some(waiter) = reply_target(&delivery.properties, &refusal.id, encoding) {
            amqp::reply_rejected(
                &self.finisher.publisher,
                &waiter,
                &refusal.id,
                &refusal.error.to_string(),
            )
            .await?;
        }
        let task = Some(refusal.id).filter(|id| !id.is_empty());
        Ok(Disposition::Reject {
            error: refusal.error,
            task,
            subtask: None,
        })
    }

    fn parse(
        &self,
        delivery: &Delivery,
        encoding: Encoding,
    ) -> Result<(String, TaskRequest<RawInput>), Refusal> {
        let properties = &delivery.properties;
        let message_id = amqp::property_str(properties.message_id()).map(str::to_owned);
        let refuse = |id: Option<&str>, error: ProtocolError| Refusal {
            id: id.or(message_id.as_deref()).unwrap_or("").to_owned(),
            error,
        };
        check_size(delivery, self.config.limits.max_message_bytes())
            .map_err(|e| refuse(None, e))?;
        if let Some(reply_to) = amqp::property_str(properties.reply_to()) {
            if amqp::is_chorus_queue(reply_to) {
                // Refused with no reply: the only place to send one is the queue named.
                return Err(refuse(
                    None,
                    ProtocolError::Invalid(format!(
                        "reply_to {} names one of Chorus's own queues ({}*); a reply queue must be the submitter's own",
                        text::quoted(reply_to),
                        topology::NAME_PREFIX
                    )),
                ));
            }
        }
        let request: TaskRequest<RawInput> = encoding
            .decode(&delivery.data)
            .map_err(|e| refuse(None, e))?;
        let id = match request.id.clone().or(message_id.clone()) {
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        protocol::validate_task_id(&id).map_err(|e| refuse(None, e))?;
        protocol::validate_kind(&request.kind).map_err(|e| refuse(Some(&id), e))?;
        if let Some(options) = &request.options {
            options.resolve().map_err(|e| refuse(Some(&id), e))?;
        }
        Ok((id, request))
    }

    /// Runs a valid request: claims its task id (with its plan, when it could be made ahead),
    /// then plans and publishes the task, or answers a duplicate.
    async fn run_task(
        &self,
        delivery: &Delivery,
        id: String,
        request: TaskRequest<RawInput>,
        encoding: Encoding,
    ) -> Result<Disposition, ServiceError> {
        let resolved = request.options.clone().unwrap_or_default().resolve()?;
        if let Some(parent) = &request.parent {
            if !self.started_by(parent, &id).await? {
                let error = ProtocolError::Invalid(format!(
                    "parent {}/{} did not start a child task {id:?}; submitters must not set parent",
                    text::quoted(&parent.task),
                    text::quoted(&parent.subtask)
                ));
                return self.refuse(delivery, encoding, Refusal { id, error }).await;
            }
        }
        let waiter = reply_target(&delivery.properties, &id, encoding);
        let options = protocol::encode(&resolved)?;
        let input = request.input.as_bytes();
        let fingerprint = self.directory.local(&request.kind);
        let submission = Submission {
            kind: &request.kind,
            options: &options,
            input,
            parent: request.parent.as_ref(),
            fingerprint,
        };
        // A first delivery is planned before its claim, and a small plan is recorded with the
        // claim: one round trip instead of two. Its planner run is not counted (it returned
        // before anything was written); a planner that takes the process down leaves the
        // message redelivered, and a redelivery is claimed first and its run counted. A task
        // with a deadline is claimed first, so that its timer never finds it missing.
        let ahead = if consume::is_redelivery(delivery) || resolved.deadline_ms.is_some() {
            Ahead::default()
        } else {
            let task = TaskView {
                id: id.clone(),
                kind: request.kind.clone(),
                options: resolved,
                usage: UsageMeter::default(),
                budget: resolved.max_tokens.map(|max_tokens| Budget {
                    max_tokens,
                    used: 0,
                }),
                subtasks: Vec::new(),
            };
            self.plan_ahead(task, input).await
        };
        let cap = resolved.max_concurrency;
        let small_wave = ahead
            .entries
            .as_ref()
            .filter(|entries| entries.len() <= CHUNK)
            .map(|entries| graph::first_wave(entries, cap));
        let lease_ttl = self.config.outcomes.lease();
        let store = &self.finisher.store;
        let claim = match (&ahead.entries, &small_wave) {
            (Some(entries), Some(wave)) => {
                store
                    .claim_planned(
                        &id,
                        waiter.as_ref(),
                        submission,
                        lease_ttl,
                        entries,
                        wave,
                        cap,
                        &ahead.usage,
                    )
                    .await?
            }
            _ => {
                store
                    .claim(&id, waiter.as_ref(), submission, lease_ttl)
                    .await?
            }
        };
        if matches!(
            claim,
            Claim::New(_) | Claim::Planned { .. } | Claim::Cancelled(_)
        ) {
            // Only the deployment's kinds are labels: a submitter's unknown name is not.
            let known = self.registry.get(&request.kind).is_some();
            metrics::task_submitted(if known { &request.kind } else { "(unknown)" });
        }
        self.follow_claim(&id, claim, waiter.as_ref(), &resolved, ahead, small_wave)
            .await
    }

    /// Goes on from the claim of task `id`: publishes the first wave of a plan recorded with
    /// the claim, plans a new task (`ahead`: the plan made before the claim, if any, with its
    /// `small_wave`, and its planner's usage), answers a duplicate of a finished task, or
    /// carries on with one claimed earlier. The usage of a plan made ahead of a claim that
    /// found the task existing is not counted: that submission was a duplicate, its planner
    /// run wasted (docs/llm.md#tokens-and-cost). A new task claimed without its plan lease
    /// (`Claim::New(None)`) keeps its plan made ahead for when it gets the lease.
    async fn follow_claim(
        &self,
        id: &str,
        claim: Claim,
        waiter: Option<&ReplyTarget>,
        resolved: &ResolvedOptions,
        ahead: Ahead,
        small_wave: Option<FirstWave>,
    ) -> Result<Disposition, ServiceError> {
        match claim {
            Claim::Planned { lease, record } => {
                // The common case: a new task, planned and recorded with its claim.
                let entries = ahead.entries.unwrap_or_default();
                let wave = small_wave.unwrap_or_default();
                let result = self
                    .publish_first_wave(id, &lease, &record, resolved, entries, &wave)
                    .await;
                lease.release_or_log(id).await;
                result.map(|()| Disposition::Ack)
            }
            Claim::New(Some(Planning {
                lease,
                runs,
                record,
            })) => {
                // A new task, its plan lease and planner run acquired with the claim; a large plan
                // made ahead is recorded in chunks without running the planner again.
                self.plan_then_release(id, lease, Some(record), Some(runs), ahead)
                    .await
            }
            Claim::Finished(outcome) => {
                tracing::info!(task = %id, status = outcome.status.as_str(), "duplicate of a finished task; replying with its outcome");
                if let Some(waiter) = waiter {
                    self.finisher.reply(waiter, &outcome).await?;
                }
                // Finishes an interrupted delivery to the other waiters, if any.
                self.finisher.finish_if_settled(id).await?;
                Ok(Disposition::Ack)
            }
            Claim::Cancelled(reason) => {
                // A cancel sent before this claim: the task ends `cancelled`, nothing planned.
                tracing::info!(task = %id, "task cancelled before its claim; not planning it");
                self.finisher.cancel(id, reason.as_deref()).await?;
                Ok(Disposition::Ack)
            }
            // A new task whose plan lease an earlier task of the id still holds: planned once
            // the lease lapses, with the plan made ahead (its calls paid once, and counted).
            Claim::New(None) => self.plan_and_publish(id, ahead).await,
            Claim::Exists(state) => self.carry_on(id, state).await,
        }
    }

    /// Whether `parent` started task `id` as its child: only such a task may report to a
    /// parent's subtask.
    async fn started_by(&self, parent: &ParentRef, id: &str) -> Result<bool, ServiceError> {
        Ok(
            publish::child_task_id(&parent.task, &parent.subtask, parent.round) == id
                && self.finisher.store.is_child(&parent.task, id).await?,
        )
    }

    /// Carries on with a task claimed earlier, now in `state`: plans it (or waits for the
    /// orchestrator planning it) while it is not running yet; acks a duplicate otherwise.
    async fn carry_on(&self, id: &str, state: TaskState) -> Result<Disposition, ServiceError> {
        if matches!(state, TaskState::Running | TaskState::Finished) {
            tracing::info!(task = %id, state = state.as_str(), "duplicate of a running task; its outcome will be sent to this submitter too");
            // A task whose last step was interrupted (one without subtasks, whose orchestrator
            // died before finishing it) is pushed on by any duplicate.
            self.finisher.finish_if_settled(id).await?;
            return Ok(Disposition::Ack);
        }
        // The kind is checked on the claimed record, not on this request: a duplicate naming
        // another kind must not change the task it duplicates.
        self.plan_and_publish(id, Ahead::default()).await
    }

    /// Stores and delivers a `rejected` outcome for a claimed task, counting `usage` (what its
    /// planner's model calls used: a refused plan was paid for too); the request is
    /// dead-lettered.
    async fn reject_task(
        &self,
        id: &str,
        reason: String,
        usage: &[Usage],
    ) -> Result<Disposition, ServiceError> {
        self.finisher
            .conclude(&Outcome::rejected(id, reason.clone()), usage)
            .await?;
        Ok(Disposition::Reject {
            error: ProtocolError::Invalid(reason),
            task: Some(id.to_owned()),
            subtask: None,
        })
    }

    /// Plans task `id` (or resumes publishing it) once this process holds its plan lease;
    /// `ahead` is a plan made before the claim (used when the task is still planning), or
    /// none.
    async fn plan_and_publish(&self, id: &str, ahead: Ahead) -> Result<Disposition, ServiceError> {
        let store = &self.finisher.store;
        let keys = TaskKeys::new(id);
        // Planner runs that never return (a planner crashing the process) are counted, so such
        // a task is rejected instead of taking orchestrators down forever. The count is taken
        // with the lease and the read, in one round trip.
        let lease_key = keys.plan_lease();
        let request = LeaseRequest {
            key: &lease_key,
            ttl: self.config.outcomes.lease(),
            run: PLAN_RUN,
            results_up_to: 0,
        };
        let leased = loop {
            if let Some(leased) = store.lease_run(id, &request).await? {
                break leased;
            }
            // Another orchestrator (or this one, for a twin delivery) is on it; wait for it to
            // finish or for its lease to lapse.
            match store.task(id).await? {
                Some(record)
                    if matches!(record.state, TaskState::Planning | TaskState::Planned) =>
                {
                    tokio::time::sleep(PLANNING_ELSEWHERE_POLL).await;
                }
                _ => return Ok(Disposition::Ack),
            }
        };
        self.plan_then_release(id, leased.lease, leased.record, leased.runs, ahead)
            .await
    }

    /// Publishes the first wave of a plan just recorded under the plan `lease`.
    async fn publish_first_wave(
        &self,
        id: &str,
        lease: &Lease,
        record: &TaskRecord,
        options: &protocol::ResolvedOptions,
        entries: Vec<PlanEntry>,
        wave: &graph::FirstWave,
    ) -> Result<(), ServiceError> {
        failpoint::hit("orchestrator.after-plan-recorded").await;
        tracing::info!(task = id, kind = %record.kind, subtasks = entries.len(), first_wave = wave.release.len(), "task planned");
        // The plan is moved, not copied, into the first wave: a large plan is held once.
        let first: Vec<PlanEntry> = if wave.release.len() == entries.len() {
            entries
        } else {
            let mut slots: Vec<Option<PlanEntry>> = entries.into_iter().map(Some).collect();
            wave.release
                .iter()
                .filter_map(|&position| slots.get_mut(position).and_then(Option::take))
                .collect()
        };
        self.publish_wave(id, lease, record, options, 0, Some(&first))
            .await
    }

    /// Why a plan cannot run, if it cannot: a bad graph, too many subtasks, one too large.
    fn refuse_plan(&self, entries: &[PlanEntry]) -> Option<String> {
        let limit = self.config.limits.max_subtasks;
        if entries.len() as u64 > limit {
            return Some(format!(
                "plan has {} subtasks; the limit is {limit} (--max-subtasks)",
                entries.len()
            ));
        }
        if let Err(reason) = graph::check_plan(entries) {
            return Some(format!("invalid plan: {reason}"));
        }
        let room = self
            .config
            .limits
            .max_message_bytes()
            .saturating_sub(SUBTASK_ENVELOPE_BYTES);
        entries
            .iter()
            .find(|entry| entry.payload.len() > room)
            .map(|big| {
                format!(
                    "subtask {} is {} bytes; the limit is {room}",
                    big.id,
                    big.payload.len()
                )
            })
    }

    /// Publishes first-wave subtasks `from..` batch by batch, saving the confirmed prefix after
    /// each; `in_memory` holds the whole wave when the plan was just made. Moving the task to
    /// running releases the plan `lease`.
    async fn publish_wave(
        &self,
        id: &str,
        lease: &Lease,
        record: &TaskRecord,
        options: &protocol::ResolvedOptions,
        from: u64,
        in_memory: Option<&[PlanEntry]>,
    ) -> Result<(), ServiceError> {
        let store = &self.finisher.store;
        let total = match in_memory {
            Some(wave) => wave.len() as u64,
            None => record.wave_len,
        };
        let context = TaskContext {
            task: id,
            kind: &record.kind,
            options,
            created_ms: record.created_ms,
            max_message_bytes: self.config.limits.max_message_bytes(),
            // The first wave is the plan's: round 1, even when republished later.
            round: 1,
            fingerprint: record.fingerprint.as_deref(),
        };
        let mut start = from;
        while start < total {
            let end = (start + self.config.publish_batch).min(total);
            let loaded;
            let entries: &[PlanEntry] = match in_memory {
                Some(all) => all
                    .get(
                        usize::try_from(start).unwrap_or(usize::MAX)
                            ..usize::try_from(end).unwrap_or(usize::MAX),
                    )
                    .unwrap_or(&[]),
                None => {
                    loaded = store
                        .wave_range(id, record.wave_is_order, start, end)
                        .await?;
                    &loaded
                }
            };
            publish::publish_entries(store, &self.finisher.publisher, context, entries).await?;
            // The last batch is recorded as the task moves to running, below.
            if end < total {
                store.set_published(id, end).await?;
            }
            failpoint::hit("orchestrator.after-batch").await;
            start = end;
        }
        store.mark_running(id, total, lease).await?;
        // Only a task planned empty has no result to finish it (a plan with work always has a
        // first wave: a plan whose every subtask waits is a cycle, and rejected).
        if total == 0 {
            self.finisher.finish_if_settled(id).await?;
        }
        Ok(())
    }
}
