//! Planning a task: ahead of its claim when that is safe (one round trip records claim and
//! plan), or under the plan lease after the claim, with the planner's runs counted so a planner
//! that keeps crashing its process fails the task as poison (docs/reliability.md).

use super::*;

impl Orchestrator {
    /// The plan of a task not claimed yet, when its kind is known and plans it without error
    /// or refusal (no entries send the task the usual way: claim, then plan again and reject),
    /// with what the planner's model calls used either way.
    pub(super) async fn plan_ahead(&self, task: TaskView, input: &[u8]) -> Ahead {
        let Some(kind) = self.registry.get(&task.kind) else {
            return Ahead::default();
        };
        let input = input.to_vec();
        let inline = kind.inline_plan(&input);
        let meter = task.usage.clone();
        let name = task.kind.clone();
        let planned =
            kinds::run_kind_code_retrying(inline, "plan", move || kind.plan(&task, &input)).await;
        let (entries, refused) = match self.checked_plan(&name, planned) {
            Ok(entries) => (Some(entries), None),
            Err(reason) => (None, Some(reason)),
        };
        Ahead {
            entries,
            refused,
            usage: meter.take(),
        }
    }

    /// What a planner run of kind `kind` came to: its plan when it passes [`Self::refuse_plan`],
    /// or why the task is rejected.
    pub(super) fn checked_plan(
        &self,
        kind: &str,
        planned: Result<Result<Vec<PlanEntry>, kinds::KindError>, String>,
    ) -> Result<Vec<PlanEntry>, String> {
        match planned {
            Ok(Ok(entries)) => match self.refuse_plan(&entries) {
                None => Ok(entries),
                Some(reason) => Err(reason),
            },
            Ok(Err(error)) => Err(format!(
                "invalid input for kind {}: {error}",
                text::quoted(kind)
            )),
            Err(panic) => Err(format!(
                "planner of kind {} panicked: {panic}",
                text::quoted(kind)
            )),
        }
    }

    /// Plans or resumes the task under its plan lease (`record` and `runs` were read as it was
    /// acquired; `ahead` is a plan made before the claim), then releases the lease.
    pub(super) async fn plan_then_release(
        &self,
        id: &str,
        lease: Lease,
        record: Option<TaskRecord>,
        runs: Option<u64>,
        ahead: Ahead,
    ) -> Result<Disposition, ServiceError> {
        let result = self
            .plan_and_publish_leased(id, &lease, record, runs, ahead)
            .await;
        lease.release_or_log(id).await;
        result
    }

    pub(super) async fn plan_and_publish_leased(
        &self,
        id: &str,
        lease: &Lease,
        record: Option<TaskRecord>,
        runs: Option<u64>,
        ahead: Ahead,
    ) -> Result<Disposition, ServiceError> {
        let store = &self.finisher.store;
        let Some(record) = record else {
            return Ok(Disposition::Ack);
        };
        if record.state != TaskState::Planning {
            // No planner runs: the count goes back at once.
            if runs.is_some() {
                store.end_run(id, PLAN_RUN).await?;
            }
            return self
                .plan_counted(id, lease, record, None, Ahead::default())
                .await;
        }
        // The run is uncounted (`end_run`) when this attempt fails short of a crash: only runs
        // that take the process down stay counted.
        let result = self.plan_counted(id, lease, record, runs, ahead).await;
        if result.is_err() && runs.is_some() {
            drop(store.end_run(id, PLAN_RUN).await);
        }
        result
    }

    /// Plans (when `record` is still planning; `runs` counts this planner run, `ahead` is a
    /// plan made before the claim, or at least its planner's usage) or resumes publishing the
    /// task, under its plan lease. The planner's usage is counted with the plan (or the
    /// rejection), in the same script.
    pub(super) async fn plan_counted(
        &self,
        id: &str,
        lease: &Lease,
        record: TaskRecord,
        runs: Option<u64>,
        ahead: Ahead,
    ) -> Result<Disposition, ServiceError> {
        let store = &self.finisher.store;
        let options = record.resolved_options(id)?;
        if let Some(deadline_ms) = options.deadline_ms {
            if record.state == TaskState::Planning {
                // Set on every planning run: a crash before it must not leave the task without
                // a timer, and a second timer is harmless.
                arm_deadline(
                    &self.finisher.publisher,
                    id,
                    record.created_ms.saturating_add(deadline_ms),
                )
                .await?;
            }
        }
        match record.state {
            TaskState::Planning => {
                let (entries, usage) = match ahead.entries {
                    // Made and checked before the claim.
                    Some(entries) => (entries, ahead.usage),
                    None => match self
                        .plan_claimed(id, &record, runs, (ahead.refused, ahead.usage))
                        .await?
                    {
                        Ok(planned) => planned,
                        Err(disposition) => return Ok(disposition),
                    },
                };
                let wave = graph::first_wave(&entries, options.max_concurrency);
                // The planner run ends as the plan is recorded, in one round trip (a rejection
                // drops the count with the rest of the working state).
                tokio::try_join!(
                    store.end_run(id, PLAN_RUN),
                    store.record_plan(id, lease, &entries, &wave, options.max_concurrency, &usage)
                )?;
                self.publish_first_wave(id, lease, &record, &options, entries, &wave)
                    .await?;
            }
            TaskState::Planned => {
                tracing::info!(
                    task = id,
                    published = record.published,
                    wave = record.wave_len,
                    "resuming publication of a planned task"
                );
                self.publish_wave(id, lease, &record, &options, record.published, None)
                    .await?;
            }
            TaskState::Running | TaskState::Finished => {}
        }
        Ok(Disposition::Ack)
    }

    /// Runs the planner of a claimed task (`runs` counts this run): its checked plan with what
    /// the planner's model calls used (`carried`, a run made ahead of the claim, included), or
    /// how the task message ends when the task is rejected instead. A plan made ahead and
    /// refused (`refused`) rejects the task without running the planner again, so its calls
    /// are paid once.
    pub(super) async fn plan_claimed(
        &self,
        id: &str,
        record: &TaskRecord,
        runs: Option<u64>,
        (refused, carried): (Option<String>, Vec<Usage>),
    ) -> Result<Result<(Vec<PlanEntry>, Vec<Usage>), Disposition>, ServiceError> {
        let Some(kind) = self.registry.get(&record.kind) else {
            let known = self.known_kinds().await;
            // The name is the submitter's text: quoted, escaped and bounded.
            let reason = format!(
                "unknown kind {}; this deployment knows: {known}",
                text::quoted(&record.kind)
            );
            return self.reject_task(id, reason, &carried).await.map(Err);
        };
        match runs {
            None => return Ok(Err(Disposition::Ack)),
            Some(runs) if runs > self.config.limits.max_deliveries => {
                let reason = format!(
                    "planning did not finish in {} runs: the planner of kind {} may be crashing the orchestrator",
                    runs - 1,
                    text::quoted(&record.kind)
                );
                return self.reject_task(id, reason, &carried).await.map(Err);
            }
            Some(_) => {}
        }
        if let Some(reason) = refused {
            return self.reject_task(id, reason, &carried).await.map(Err);
        }
        let input = record.input.clone();
        let inline = kind.inline_plan(&input);
        let options = record.resolved_options(id)?;
        let task = TaskView {
            id: id.to_owned(),
            kind: record.kind.clone(),
            options,
            usage: UsageMeter::default(),
            budget: options.max_tokens.map(|max_tokens| Budget {
                max_tokens,
                used: record.tokens_used,
            }),
            subtasks: Vec::new(),
        };
        let meter = task.usage.clone();
        let planned =
            kinds::run_kind_code_retrying(inline, "plan", move || kind.plan(&task, &input)).await;
        let mut used = carried;
        usage::merge(&mut used, meter.take());
        match self.checked_plan(&record.kind, planned) {
            Ok(entries) => Ok(Ok((entries, used))),
            Err(reason) => self.reject_task(id, reason, &used).await.map(Err),
        }
    }
}
