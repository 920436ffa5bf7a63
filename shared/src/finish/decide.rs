//! What happens to a task, decided from what is known of it: plain functions of its record,
//! its resolved options, its settled results and the time, with no Redis, no RabbitMQ and
//! nothing async, so every rule of how a task ends can be read (and tested) in one place.
//!
//! The rules come from the protocol: [`Status`] says when each status applies, [`OnFailure`]
//! what a failed subtask does to its task, [`ResolvedOptions::deadline_ms`] and
//! [`ResolvedOptions::max_rounds`] when a task runs out of time or of review rounds.

use std::collections::HashMap;

use rmpv::Value;

use crate::{
    error::ProtocolError,
    protocol::{
        self, OnFailure, Outcome, OutcomeError, ResolvedOptions, Stats, Status, SubtaskOutcome,
    },
    store::{Settled, StoredResult, TaskRecord, TaskState},
    text,
};

#[cfg(test)]
mod tests;

/// Counters of a task, as its outcome reports them; `now_ms` (ms since the Unix epoch) is when
/// it ends.
pub(crate) fn stats_of(record: &TaskRecord, now_ms: u64) -> Stats {
    Stats {
        subtasks: record.total,
        succeeded: record.succeeded,
        failed: record.failed,
        retries: record.retries,
        duration_ms: now_ms.saturating_sub(record.created_ms),
        skipped: record.skipped,
        rounds: record.round,
        tokens: record.tokens.clone(),
        cost: record.cost,
    }
}

/// An error of the task as a whole (no subtask named).
fn task_error(message: String) -> OutcomeError {
    OutcomeError {
        subtask: None,
        message: text::reason(&message),
    }
}

/// An outcome of task `id` with `status`, no output and `message` as its one, task-level
/// error: a task stopped (cancelled, past its deadline, over a limit) or whose synthesis could
/// not run.
pub(crate) fn failed_outcome(
    id: &str,
    status: Status,
    message: String,
    record: &TaskRecord,
    now_ms: u64,
) -> Outcome {
    ended_without_output(id, status, vec![task_error(message)], record, now_ms)
}

/// An outcome of task `id` with `status`, no output and `errors`.
fn ended_without_output(
    id: &str,
    status: Status,
    errors: Vec<OutcomeError>,
    record: &TaskRecord,
    now_ms: u64,
) -> Outcome {
    Outcome {
        id: id.to_owned(),
        status,
        output: Value::Nil,
        errors,
        stats: stats_of(record, now_ms),
    }
}

/// Whether a task in `state` may still settle: its plan is recorded and it has no outcome.
pub(crate) fn is_open(state: TaskState) -> bool {
    matches!(state, TaskState::Planned | TaskState::Running)
}

/// What to do with a task under its synthesis lease.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeasedStep {
    /// Nothing: the task is delivered, or it is not settled and no run was counted.
    Nothing,
    /// The task is not settled after all (a review round began meanwhile): the synthesis run
    /// counted with the lease ends unused.
    EndRun,
    /// The outcome is stored: deliver it.
    Deliver,
    /// Synthesis started too many times without finishing: fail the task with this message.
    GiveUp(String),
    /// Review and synthesize.
    Synthesize,
}

/// The step for task `record` with `pending` subtasks left, `runs` synthesis runs counted with
/// the lease (`None` when none was counted, which the store does only for a finished task) and
/// at most `max_runs` allowed (`--max-deliveries`, the poison limit).
pub(crate) fn step_under_lease(
    record: &TaskRecord,
    pending: u64,
    runs: Option<u64>,
    max_runs: u64,
) -> LeasedStep {
    if record.delivered {
        return LeasedStep::Nothing;
    }
    if record.state == TaskState::Finished {
        return LeasedStep::Deliver;
    }
    // Checked under the lease: another synthesizer may have started a review round (more
    // pending subtasks) between the caller's look and this lease.
    let settled = is_open(record.state) && pending == 0;
    match runs {
        None => LeasedStep::Nothing,
        Some(_) if !settled => LeasedStep::EndRun,
        // This run is the one counted last; the ones before it never finished.
        Some(runs) if runs > max_runs => LeasedStep::GiveUp(format!(
            "synthesis did not finish in {} runs: it may be crashing the synthesizer",
            runs - 1
        )),
        Some(_) => LeasedStep::Synthesize,
    }
}

/// The task-level error of a task past its deadline of `deadline_ms`.
pub(crate) fn deadline_message(deadline_ms: u64) -> String {
    format!("deadline exceeded ({deadline_ms} ms)")
}

/// Where a task stands with its deadline at `now_ms`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The task has no deadline.
    None,
    /// The deadline passed: the task fails with this message.
    Passed(String),
    /// The deadline is ahead, at this time (ms since the Unix epoch).
    Due(u64),
}

/// The deadline of task `record` with `options`, counted from its claim, at `now_ms`.
pub(crate) fn deadline(record: &TaskRecord, options: &ResolvedOptions, now_ms: u64) -> Deadline {
    let Some(deadline_ms) = options.deadline_ms else {
        return Deadline::None;
    };
    let due = record.created_ms.saturating_add(deadline_ms);
    if now_ms >= due {
        Deadline::Passed(deadline_message(deadline_ms))
    } else {
        Deadline::Due(due)
    }
}

/// The task-level error of a cancellation that gave `reason` (or none).
pub(crate) fn cancel_message(reason: Option<&str>) -> String {
    // The reason is the canceller's text, and goes to the log and the outcome.
    reason.map_or_else(|| "cancelled on request".to_owned(), text::reason)
}

/// The kind's code to run on a settled task (see [`decide`]).
#[derive(Debug, PartialEq)]
pub(crate) struct KindRun {
    /// Subtask ids in plan order, for the review's check of what it adds.
    pub order: Vec<String>,
    /// Succeeded subtasks and their outputs (MessagePack), in plan order.
    pub successes: Vec<(String, Vec<u8>)>,
    /// The failed and skipped subtasks, in plan order: the errors of the outcome.
    pub errors: Vec<OutcomeError>,
    /// Whether the kind's review runs first: review rounds are left.
    pub review: bool,
}

/// What a settled task calls for.
#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    /// The task ends with this outcome; no kind code runs.
    Outcome(Outcome),
    /// The kind's review (maybe) and synthesis run; [`synthesized`] makes the outcome.
    RunKind(KindRun),
}

/// The decision for settled task `id` (`record`, `options`, its `settled` results) at
/// `now_ms`:
/// - a failure past the deadline fails the task, the deadline named first among its errors
///   (workers cut subtasks off at the deadline, so their failures may settle the task before
///   the deadline timer does: the outcome is the same either way);
/// - with no failure, or with `on_failure: continue` and some success, the kind runs;
/// - otherwise the task fails, saying why.
pub(crate) fn decide(
    id: &str,
    record: &TaskRecord,
    options: &ResolvedOptions,
    settled: Settled,
    now_ms: u64,
) -> Decision {
    let (successes, mut errors) = in_plan_order(settled.results, &settled.order);
    let failed = errors.len();
    if failed > 0 {
        if let Deadline::Passed(message) = deadline(record, options, now_ms) {
            errors.insert(0, task_error(message));
            let outcome = ended_without_output(id, Status::Failed, errors, record, now_ms);
            return Decision::Outcome(outcome);
        }
    }
    let run_kind =
        failed == 0 || (options.on_failure == OnFailure::Continue && !successes.is_empty());
    if !run_kind {
        let message = if successes.is_empty() {
            "every subtask failed".to_owned()
        } else {
            format!(
                "{failed} of {} subtasks failed (on_failure: fail)",
                record.total
            )
        };
        errors.push(task_error(message));
        let outcome = ended_without_output(id, Status::Failed, errors, record, now_ms);
        return Decision::Outcome(outcome);
    }
    Decision::RunKind(KindRun {
        order: settled.order,
        successes,
        errors,
        review: record.round < options.max_rounds,
    })
}

/// Settled results split into successes (id, output) and errors (skipped subtasks too), each
/// sorted by the subtask's place in `order`, then by id (a subtask not in `order` goes last).
fn in_plan_order(
    results: Vec<(String, StoredResult)>,
    order: &[String],
) -> (Vec<(String, Vec<u8>)>, Vec<OutcomeError>) {
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, subtask)| (subtask.as_str(), i))
        .collect();
    let rank = |subtask: &str| position.get(subtask).copied().unwrap_or(usize::MAX);
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
    successes.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
    failures.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
    let errors = failures
        .into_iter()
        // A failure's message may be a handler's own text (or a stored one from before
        // handlers' reasons were bounded): escaped and bounded as every outcome error.
        .map(|(subtask, message)| OutcomeError {
            subtask: Some(subtask),
            message: text::reason(&message),
        })
        .collect();
    (successes, errors)
}

/// The outcome of task `id` once its kind's synthesis ran (`synthesis`: the output, or the
/// error message): `succeeded` with no subtask `errors`, `partial` with some, `failed` (no
/// output, the synthesis error added) when the synthesis failed.
pub(crate) fn synthesized(
    id: &str,
    record: &TaskRecord,
    mut errors: Vec<OutcomeError>,
    synthesis: Result<Value, String>,
    now_ms: u64,
) -> Outcome {
    let (status, output) = match synthesis {
        Ok(output) if errors.is_empty() => (Status::Succeeded, output),
        Ok(output) => (Status::Partial, output),
        Err(message) => {
            errors.push(task_error(message));
            (Status::Failed, Value::Nil)
        }
    };
    Outcome {
        id: id.to_owned(),
        status,
        output,
        errors,
        stats: stats_of(record, now_ms),
    }
}

/// The result a child task `id`'s `outcome` settles its parent's subtask with: the output
/// (MessagePack) when the child succeeded, even partly; a failure listing the child's errors
/// otherwise.
///
/// # Errors
/// The output cannot be encoded.
pub(crate) fn child_result(id: &str, outcome: &Outcome) -> Result<SubtaskOutcome, ProtocolError> {
    Ok(match outcome.status {
        Status::Succeeded | Status::Partial => SubtaskOutcome::Succeeded(
            serde_bytes::ByteBuf::from(protocol::encode(&outcome.output)?),
        ),
        status => {
            let reasons: Vec<&str> = outcome.errors.iter().map(|e| e.message.as_str()).collect();
            SubtaskOutcome::Failed(format!(
                "child task {id} {}: {}",
                status.as_str(),
                reasons.join("; ")
            ))
        }
    })
}
