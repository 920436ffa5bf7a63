//! The way into finishing a settled task: its synthesis lease (which comes with what the
//! synthesis reads first), the step [`decide`] picks under it, and the kind's review and
//! synthesis when it runs.

use std::sync::Arc;

use rmpv::Value;

use super::{
    decide::{self, Decision, LeasedStep},
    Finisher, LEASE_POLL, RESULTS_WITH_LEASE, SYNTH_RUN,
};
use crate::{
    clock::now_ms,
    error::{ServiceError, StoreError},
    failpoint,
    kinds::{self, DynKind, TaskView},
    protocol::{Outcome, ResolvedOptions, Status},
    store::{
        Lease, LeaseRequest, LeasedRun, Settled, SettledLease, TaskKeys, TaskRecord, TaskState,
    },
    usage::{self, Budget, Usage, UsageMeter},
};

/// What synthesis decided.
enum Synthesis {
    /// The task is over; the usage of the review and synthesis that ran (already in the
    /// outcome's stats) is counted as it is stored.
    Outcome(Box<Outcome>, Vec<Usage>),
    /// The review sent subtasks back: another round runs.
    NextRound,
}

impl Finisher {
    /// Finishes task `id` if all its subtasks are settled; delivers a stored but undelivered
    /// outcome; does nothing otherwise. Waits while another process holds the task's lease.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn finish_if_settled(&self, id: &str) -> Result<(), ServiceError> {
        self.finish_if_settled_after(id, 0).await
    }

    /// [`Finisher::finish_if_settled`] for a task other synthesizers handed over `hops` times
    /// (`handover.rs`).
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub(super) async fn finish_if_settled_after(
        &self,
        id: &str,
        hops: u32,
    ) -> Result<(), ServiceError> {
        loop {
            let Some(record) = self.store.task(id).await? else {
                return Ok(());
            };
            if record.delivered {
                return Ok(());
            }
            let ready = record.state == TaskState::Finished
                || (decide::is_open(record.state) && self.store.pending_count(id).await? == 0);
            if !ready {
                return Ok(());
            }
            // Delivery too happens under the lease, so that without a crash nobody gets the
            // outcome twice.
            if let Some(leased) = self.lease_synthesis(id).await? {
                return self.finish_then_release(id, leased, hops).await;
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
            Some(SettledLease::Acquired(leased)) => Some(*leased),
            Some(SettledLease::Held) => None,
            None => self.lease_synthesis(id).await?,
        };
        match leased {
            Some(leased) => self.finish_then_release(id, leased, 0).await,
            // Someone else is finishing it: wait for them the usual way.
            None => self.finish_if_settled(id).await,
        }
    }

    /// What the synthesis lease of task `id` is asked for: by
    /// [`crate::store::Store::record_results`] (the `lease_key` is [`TaskKeys::synth_lease`]) and
    /// by this finisher.
    pub fn synthesis_lease<'a>(&self, lease_key: &'a str) -> LeaseRequest<'a> {
        LeaseRequest {
            key: lease_key,
            ttl: self.lease,
            run: SYNTH_RUN,
            results_up_to: RESULTS_WITH_LEASE,
        }
    }

    /// Releases a synthesis lease acquired for a synthesis that will not run now (the caller
    /// failed before it could start): its run is not counted against the task.
    pub async fn release_unstarted(&self, id: &str, lease: Option<SettledLease>) {
        if let Some(SettledLease::Acquired(leased)) = lease {
            leased.release_unstarted(id, SYNTH_RUN).await;
        }
    }

    /// Acquires the task's synthesis lease with what synthesis reads first; `None` while another
    /// process holds it.
    async fn lease_synthesis(&self, id: &str) -> Result<Option<LeasedRun>, StoreError> {
        let lease_key = TaskKeys::new(id).synth_lease();
        self.store
            .lease_run(id, &self.synthesis_lease(&lease_key))
            .await
    }

    /// Finishes the task under the lease just acquired (or hands it over, `hops` counting the
    /// earlier hand-overs), then releases the lease.
    async fn finish_then_release(
        &self,
        id: &str,
        leased: LeasedRun,
        hops: u32,
    ) -> Result<(), ServiceError> {
        let LeasedRun {
            lease,
            record,
            runs,
            pending,
            settled,
        } = leased;
        let result = match record {
            Some(record) => {
                self.finish_leased(id, &lease, record, (runs, pending, hops), settled)
                    .await
            }
            None => Ok(()),
        };
        lease.release_or_log(id).await;
        result
    }

    /// The task's record, pending count and run count were read as the lease was acquired; the
    /// run is counted only for a task that is not finished, which is exactly when the synthesis
    /// below runs.
    async fn finish_leased(
        &self,
        id: &str,
        lease: &Lease,
        record: TaskRecord,
        (runs, pending, hops): (Option<u64>, u64, u32),
        preread: Option<Settled>,
    ) -> Result<(), ServiceError> {
        // Built now from what the lease read, before the synthesis takes it: the outcome's
        // script then writes it without another read.
        let kept_graph = preread.as_ref().and_then(|read| {
            crate::admin::graph::from_lease_read(id, read)
                .unwrap_or_else(|error| {
                    tracing::warn!(task = %crate::text::quoted(id), %error, "cannot keep the task's graph for the dashboard");
                    None
                })
        });
        let (outcome, usage) = match decide::step_under_lease(&record, pending, runs, self.max_runs)
        {
            LeasedStep::Nothing => return Ok(()),
            LeasedStep::EndRun => return Ok(self.store.end_run(id, SYNTH_RUN).await?),
            LeasedStep::Deliver => return self.deliver(id, Some(lease)).await,
            LeasedStep::GiveUp(message) => {
                tracing::warn!(task = id, %message, "giving up on the synthesis");
                let outcome =
                    decide::failed_outcome(id, Status::Failed, message, &record, now_ms());
                (outcome, Vec::new())
            }
            // A kind being rolled out: a live synthesizer with the task's definition takes it.
            LeasedStep::Synthesize if self.hand_over(id, &record, hops).await? => {
                return Ok(self.store.end_run(id, SYNTH_RUN).await?);
            }
            LeasedStep::Synthesize => match self.synthesize(id, record, lease, preread).await {
                Ok(Synthesis::Outcome(outcome, usage)) => (*outcome, usage),
                Ok(Synthesis::NextRound) => return Ok(self.store.end_run(id, SYNTH_RUN).await?),
                Err(error) => {
                    self.store.end_run(id, SYNTH_RUN).await?;
                    return Err(error);
                }
            },
        };
        // The run ends as the outcome is stored, in one round trip.
        let ((), finished) = tokio::try_join!(
            self.store.end_run(id, SYNTH_RUN),
            self.store
                .store_outcome(&outcome, &usage, self.outcome_ttl, kept_graph)
        )?;
        failpoint::hit("synthesizer.after-store-outcome").await;
        self.deliver_finished(id, finished, Some(lease)).await
    }

    /// Decides what the settled task gets ([`decide::decide`]) and runs its kind's code when it
    /// calls for that: the review while rounds are left, then the synthesis. `preread` are the
    /// results read with the lease, if they were.
    async fn synthesize(
        &self,
        id: &str,
        record: TaskRecord,
        lease: &Lease,
        preread: Option<Settled>,
    ) -> Result<Synthesis, ServiceError> {
        let options = record.resolved_options(id)?;
        let settled = match preread {
            Some(settled) => settled,
            None => {
                let (order, results) =
                    tokio::try_join!(self.store.order(id), self.store.results(id))?;
                Settled {
                    order,
                    results,
                    plan: Vec::new(),
                }
            }
        };
        let run = match decide::decide(id, &record, &options, settled, now_ms()) {
            Decision::Outcome(outcome) => {
                return Ok(Synthesis::Outcome(Box::new(outcome), Vec::new()))
            }
            Decision::RunKind(run) => run,
        };
        // One view for the review and the synthesis: its meter holds what their model calls
        // used until the outcome (or the next round) counts it.
        let task = task_view(id, &record, options);
        if run.review {
            match self
                .review(&task, &record, &run.successes, &run.order, lease)
                .await
            {
                Ok(true) => return Ok(Synthesis::NextRound),
                Ok(false) => {}
                Err(message) => {
                    return Ok(counted(
                        &task.usage,
                        decide::failed_outcome(id, Status::Failed, message, &record, now_ms()),
                    ));
                }
            }
        }
        let failures: Vec<(String, String)> = run
            .errors
            .iter()
            .filter_map(|e| Some((e.subtask.clone()?, e.message.clone())))
            .collect();
        let synthesis = self
            .run_synthesis(&task, &record, run.successes, failures)
            .await;
        Ok(counted(
            &task.usage,
            decide::synthesized(id, &record, run.errors, synthesis, now_ms()),
        ))
    }

    /// The kind of task `record`, and whether its code runs on this thread for `outputs`
    /// outputs (see [`kinds::run_kind_code`]).
    ///
    /// # Errors
    /// The kind is not registered here, as a message for the outcome.
    pub(super) fn kind_for(
        &self,
        record: &TaskRecord,
        outputs: usize,
    ) -> Result<(Arc<dyn DynKind>, bool), String> {
        let Some(kind) = self.registry.get(&record.kind) else {
            return Err(format!(
                "kind {:?} is not registered in this synthesizer",
                record.kind
            ));
        };
        let inline = kind.inline() && outputs <= kinds::INLINE_OUTPUTS;
        Ok((kind, inline))
    }

    /// Runs the kind's synthesis of `outputs` (in plan order).
    ///
    /// # Errors
    /// The kind is unknown, or its synthesis failed or panicked, as a message for the outcome.
    async fn run_synthesis(
        &self,
        task: &TaskView,
        record: &TaskRecord,
        outputs: Vec<(String, Vec<u8>)>,
        failures: Vec<(String, String)>,
    ) -> Result<Value, String> {
        let (kind, inline) = self.kind_for(record, outputs.len())?;
        let input = record.input.clone();
        let task = task.clone();
        let ran = if kind.calls_out() {
            // Each run consumes its outputs: kept to run again after a retryable failure.
            let outputs = Arc::new(outputs);
            kinds::run_kind_code_retrying(inline, "synthesis", move || {
                kind.synthesize(&task, &input, outputs.as_ref().clone(), &failures)
            })
            .await
        } else {
            kinds::run_kind_code(inline, move || {
                kind.synthesize(&task, &input, outputs, &failures)
            })
            .await
        };
        match ran {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(format!("synthesis failed: {error}")),
            Err(panic) => Err(format!("synthesis panicked: {panic}")),
        }
    }
}

/// `outcome` with what `meter` holds (the usage of the review and synthesis that ran) added to
/// its stats, to be counted as it is stored.
fn counted(meter: &UsageMeter, mut outcome: Outcome) -> Synthesis {
    let used = meter.take();
    usage::add_to_stats(&mut outcome.stats.tokens, &mut outcome.stats.cost, &used);
    Synthesis::Outcome(Box::new(outcome), used)
}

/// What the kind's review and synthesis are told about task `id`: its budget is what the
/// record counts when the lease was taken.
fn task_view(id: &str, record: &TaskRecord, options: ResolvedOptions) -> TaskView {
    TaskView {
        id: id.to_owned(),
        kind: record.kind.clone(),
        options,
        usage: UsageMeter::default(),
        budget: options.max_tokens.map(|max_tokens| Budget {
            max_tokens,
            used: record.tokens_used,
        }),
        subtasks: Vec::new(),
    }
}
