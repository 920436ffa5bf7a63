//! Unit tests of the decisions of how a task ends: every status, both partial-failure
//! policies, deadlines, review rounds, the poison limit on synthesis runs, cancellations and
//! child tasks — with no Redis and no RabbitMQ.

use rmpv::Value;
use serde_bytes::ByteBuf;

use super::*;
use crate::{
    protocol::{OnFailure, OutcomeError, ResolvedOptions, Status, SubtaskOutcome, TaskOptions},
    store::{Settled, StoredResult, TaskRecord, TaskState},
};

/// When every test task was claimed, ms since the Unix epoch.
const CREATED_MS: u64 = 1_000_000;

/// A time some seconds after the claim.
const LATER_MS: u64 = CREATED_MS + 5_000;

fn record(state: TaskState, total: u64) -> TaskRecord {
    TaskRecord {
        state,
        kind: "range-sum".into(),
        options: Vec::new(),
        input: Vec::new(),
        total,
        published: total,
        succeeded: 0,
        failed: 0,
        retries: 2,
        duplicates: 0,
        created_ms: CREATED_MS,
        delivered: false,
        skipped: 0,
        round: 1,
        wave_is_order: true,
        wave_len: total,
        parent: None,
        tokens: std::collections::BTreeMap::new(),
        tokens_used: 0,
        cost: None,
        fingerprint: None,
    }
}

fn options(on_failure: OnFailure) -> ResolvedOptions {
    let mut options = TaskOptions::default()
        .resolve()
        .unwrap_or_else(|e| panic!("default options resolve: {e}"));
    options.on_failure = on_failure;
    options
}

fn stored(subtask: &str, attempts: u32, outcome: SubtaskOutcome) -> (String, StoredResult) {
    (subtask.to_owned(), StoredResult { attempts, outcome })
}

fn succeeded(subtask: &str, output: &[u8]) -> (String, StoredResult) {
    let output = ByteBuf::from(output.to_vec());
    stored(subtask, 1, SubtaskOutcome::Succeeded(output))
}

fn failed(subtask: &str, message: &str) -> (String, StoredResult) {
    stored(subtask, 3, SubtaskOutcome::Failed(message.to_owned()))
}

fn skipped(subtask: &str, message: &str) -> (String, StoredResult) {
    stored(subtask, 0, SubtaskOutcome::Skipped(message.to_owned()))
}

fn settled(order: &[&str], results: Vec<(String, StoredResult)>) -> Settled {
    Settled {
        order: order.iter().map(|s| (*s).to_owned()).collect(),
        results,
        plan: Vec::new(),
    }
}

fn subtask_error(subtask: &str, message: &str) -> OutcomeError {
    OutcomeError {
        subtask: Some(subtask.to_owned()),
        message: message.to_owned(),
    }
}

fn task_error(message: &str) -> OutcomeError {
    OutcomeError {
        subtask: None,
        message: message.to_owned(),
    }
}

/// The decision for task `t` under `on_failure` and default options, some seconds after its
/// claim.
fn decide_later(task: &TaskRecord, on_failure: OnFailure, results: Settled) -> Decision {
    decide("t", task, &options(on_failure), results, LATER_MS)
}

fn run_kind(decision: Decision) -> KindRun {
    match decision {
        Decision::RunKind(run) => run,
        Decision::Outcome(outcome) => panic!("expected the kind to run, got {outcome:?}"),
    }
}

fn outcome(decision: Decision) -> Outcome {
    match decision {
        Decision::Outcome(outcome) => outcome,
        Decision::RunKind(run) => panic!("expected an outcome, got a kind run {run:?}"),
    }
}

#[test]
fn all_succeeded_runs_the_kind_on_outputs_in_plan_order() {
    let task = record(TaskState::Running, 3);
    // Results come back in any order; a subtask missing from the plan order goes last.
    let results = settled(
        &["a", "b"],
        vec![
            succeeded("x", b"3"),
            succeeded("b", b"2"),
            succeeded("a", b"1"),
        ],
    );
    let run = run_kind(decide_later(&task, OnFailure::Fail, results));
    let ids: Vec<&str> = run.successes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "x"]);
    assert_eq!(run.successes[0].1, b"1");
    assert!(run.errors.is_empty());
    assert_eq!(run.order, ["a", "b"]);
    assert!(!run.review, "one round allowed by default: no review");
}

#[test]
fn synthesis_without_failures_succeeds() {
    let task = record(TaskState::Running, 2);
    let outcome = synthesized("t", &task, Vec::new(), Ok(Value::from(7)), LATER_MS);
    assert_eq!(outcome.id, "t");
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.output, Value::from(7));
    assert!(outcome.errors.is_empty());
    assert_eq!(outcome.stats.duration_ms, 5_000);
    assert_eq!(outcome.stats.subtasks, 2);
    assert_eq!(outcome.stats.retries, 2);
}

#[test]
fn synthesis_with_failures_is_partial() {
    let task = record(TaskState::Running, 2);
    let errors = vec![subtask_error("b", "boom")];
    let outcome = synthesized("t", &task, errors.clone(), Ok(Value::from(1)), LATER_MS);
    assert_eq!(outcome.status, Status::Partial);
    assert_eq!(outcome.output, Value::from(1));
    assert_eq!(outcome.errors, errors);
}

#[test]
fn a_failed_synthesis_fails_the_task_with_no_output() {
    let task = record(TaskState::Running, 2);
    let errors = vec![subtask_error("b", "boom")];
    let synthesis = Err("synthesis failed: bad".to_owned());
    let outcome = synthesized("t", &task, errors, synthesis, LATER_MS);
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.output, Value::Nil);
    assert_eq!(
        outcome.errors,
        [
            subtask_error("b", "boom"),
            task_error("synthesis failed: bad")
        ]
    );
}

#[test]
fn on_failure_fail_fails_the_task_without_running_the_kind() {
    let task = record(TaskState::Running, 3);
    let results = settled(
        &["a", "b", "c"],
        vec![
            succeeded("a", b"1"),
            failed("c", "late"),
            failed("b", "early"),
        ],
    );
    let outcome = outcome(decide_later(&task, OnFailure::Fail, results));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.output, Value::Nil);
    assert_eq!(
        outcome.errors,
        [
            subtask_error("b", "early"),
            subtask_error("c", "late"),
            task_error("2 of 3 subtasks failed (on_failure: fail)"),
        ]
    );
    assert_eq!(outcome.stats.duration_ms, 5_000);
}

#[test]
fn on_failure_fail_with_every_subtask_failed_says_so() {
    let task = record(TaskState::Running, 2);
    let results = settled(&["a", "b"], vec![failed("a", "x"), failed("b", "y")]);
    let outcome = outcome(decide_later(&task, OnFailure::Fail, results));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.errors.last(),
        Some(&task_error("every subtask failed"))
    );
}

#[test]
fn on_failure_continue_runs_the_kind_on_what_succeeded() {
    let task = record(TaskState::Running, 3);
    let results = settled(
        &["a", "b", "c"],
        vec![
            succeeded("c", b"3"),
            skipped("b", "dependency a failed"),
            failed("a", "boom"),
        ],
    );
    let run = run_kind(decide_later(&task, OnFailure::Continue, results));
    assert_eq!(run.successes, [("c".to_owned(), b"3".to_vec())]);
    assert_eq!(
        run.errors,
        [
            subtask_error("a", "boom"),
            subtask_error("b", "skipped: dependency a failed"),
        ]
    );
    let outcome = synthesized("t", &task, run.errors, Ok(Value::from(3)), LATER_MS);
    assert_eq!(outcome.status, Status::Partial);
}

#[test]
fn on_failure_continue_with_nothing_succeeded_fails() {
    let task = record(TaskState::Running, 1);
    let results = settled(&["a"], vec![failed("a", "boom")]);
    let decision = decide_later(&task, OnFailure::Continue, results);
    let outcome = outcome(decision);
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(
        outcome.errors,
        [
            subtask_error("a", "boom"),
            task_error("every subtask failed")
        ]
    );
}

#[test]
fn a_failure_past_the_deadline_fails_with_the_deadline_first() {
    let task = record(TaskState::Running, 2);
    let mut options = options(OnFailure::Continue);
    options.deadline_ms = Some(5_000);
    let results = settled(
        &["a", "b"],
        vec![succeeded("a", b"1"), failed("b", "cut off")],
    );
    let outcome = outcome(decide("t", &task, &options, results, LATER_MS));
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.output, Value::Nil);
    assert_eq!(
        outcome.errors,
        [
            task_error("deadline exceeded (5000 ms)"),
            subtask_error("b", "cut off")
        ]
    );
}

#[test]
fn a_failure_before_the_deadline_follows_the_policy() {
    let task = record(TaskState::Running, 2);
    let mut options = options(OnFailure::Continue);
    options.deadline_ms = Some(5_001);
    let results = settled(&["a", "b"], vec![succeeded("a", b"1"), failed("b", "boom")]);
    let run = run_kind(decide("t", &task, &options, results, LATER_MS));
    assert_eq!(run.errors, [subtask_error("b", "boom")]);
}

#[test]
fn no_failure_past_the_deadline_still_synthesizes() {
    let task = record(TaskState::Running, 1);
    let mut options = options(OnFailure::Fail);
    options.deadline_ms = Some(1);
    let results = settled(&["a"], vec![succeeded("a", b"1")]);
    let run = run_kind(decide("t", &task, &options, results, LATER_MS));
    assert!(run.errors.is_empty());
}

#[test]
fn review_runs_while_rounds_are_left() {
    let mut task = record(TaskState::Running, 1);
    let mut options = options(OnFailure::Fail);
    options.max_rounds = 2;
    let results = || settled(&["a"], vec![succeeded("a", b"1")]);
    assert!(run_kind(decide("t", &task, &options, results(), LATER_MS)).review);
    task.round = 2;
    assert!(!run_kind(decide("t", &task, &options, results(), LATER_MS)).review);
}

#[test]
fn nothing_is_done_for_a_delivered_task() {
    let mut task = record(TaskState::Finished, 1);
    task.delivered = true;
    assert_eq!(step_under_lease(&task, 0, None, 3), LeasedStep::Nothing);
}

#[test]
fn a_finished_task_is_delivered() {
    let task = record(TaskState::Finished, 1);
    assert_eq!(step_under_lease(&task, 0, None, 3), LeasedStep::Deliver);
}

#[test]
fn a_settled_task_is_synthesized_up_to_the_run_limit() {
    let task = record(TaskState::Running, 1);
    assert_eq!(
        step_under_lease(&task, 0, Some(1), 3),
        LeasedStep::Synthesize
    );
    assert_eq!(
        step_under_lease(&task, 0, Some(3), 3),
        LeasedStep::Synthesize
    );
    let planned = record(TaskState::Planned, 1);
    assert_eq!(
        step_under_lease(&planned, 0, Some(1), 3),
        LeasedStep::Synthesize
    );
}

#[test]
fn a_synthesis_that_keeps_crashing_is_given_up() {
    let task = record(TaskState::Running, 1);
    assert_eq!(
        step_under_lease(&task, 0, Some(4), 3),
        LeasedStep::GiveUp(
            "synthesis did not finish in 3 runs: it may be crashing the synthesizer".into()
        )
    );
}

#[test]
fn a_task_no_longer_settled_ends_its_counted_run() {
    let task = record(TaskState::Running, 1);
    assert_eq!(step_under_lease(&task, 2, Some(1), 3), LeasedStep::EndRun);
    let planning = record(TaskState::Planning, 0);
    assert_eq!(
        step_under_lease(&planning, 0, Some(1), 3),
        LeasedStep::EndRun
    );
    assert_eq!(step_under_lease(&task, 2, None, 3), LeasedStep::Nothing);
}

#[test]
fn a_settled_task_without_a_counted_run_is_left_alone() {
    let task = record(TaskState::Running, 1);
    assert_eq!(step_under_lease(&task, 0, None, 3), LeasedStep::Nothing);
}

#[test]
fn only_planned_and_running_tasks_are_open() {
    assert!(is_open(TaskState::Planned));
    assert!(is_open(TaskState::Running));
    assert!(!is_open(TaskState::Planning));
    assert!(!is_open(TaskState::Finished));
}

#[test]
fn the_deadline_counts_from_the_claim() {
    let task = record(TaskState::Running, 1);
    let mut options = options(OnFailure::Fail);
    assert_eq!(deadline(&task, &options, LATER_MS), Deadline::None);
    options.deadline_ms = Some(6_000);
    assert_eq!(
        deadline(&task, &options, LATER_MS),
        Deadline::Due(CREATED_MS + 6_000)
    );
    options.deadline_ms = Some(5_000);
    assert_eq!(
        deadline(&task, &options, LATER_MS),
        Deadline::Passed("deadline exceeded (5000 ms)".into())
    );
}

#[test]
fn a_cancel_gives_its_reason_or_a_default() {
    assert_eq!(cancel_message(None), "cancelled on request");
    assert_eq!(cancel_message(Some("user quit")), "user quit");
}

#[test]
fn a_stopped_task_keeps_its_status_and_stats() {
    let mut task = record(TaskState::Running, 4);
    task.succeeded = 1;
    task.failed = 1;
    for status in [Status::Cancelled, Status::Failed, Status::Rejected] {
        let outcome = failed_outcome("t", status, "why".into(), &task, LATER_MS);
        assert_eq!(outcome.status, status);
        assert_eq!(outcome.output, Value::Nil);
        assert_eq!(outcome.errors, [task_error("why")]);
        assert_eq!(outcome.stats.subtasks, 4);
        assert_eq!(outcome.stats.succeeded, 1);
        assert_eq!(outcome.stats.failed, 1);
        assert_eq!(outcome.stats.rounds, 1);
    }
}

#[test]
fn a_clock_behind_the_claim_gives_no_negative_duration() {
    let task = record(TaskState::Running, 1);
    assert_eq!(stats_of(&task, CREATED_MS - 1).duration_ms, 0);
}

#[test]
fn a_child_that_succeeded_even_partly_gives_its_output_to_the_parent() {
    for status in [Status::Succeeded, Status::Partial] {
        let child = Outcome {
            id: "c".into(),
            status,
            output: Value::from(42),
            errors: Vec::new(),
            stats: Stats::default(),
        };
        let expected = protocol::encode(&Value::from(42))
            .unwrap_or_else(|e| panic!("an integer encodes: {e}"));
        assert_eq!(
            child_result("c", &child).ok(),
            Some(SubtaskOutcome::Succeeded(ByteBuf::from(expected)))
        );
    }
}

#[test]
fn a_child_that_did_not_succeed_fails_the_parent_subtask_with_its_errors() {
    for status in [Status::Failed, Status::Rejected, Status::Cancelled] {
        let child = Outcome {
            id: "c".into(),
            status,
            output: Value::Nil,
            errors: vec![
                subtask_error("s", "boom"),
                task_error("every subtask failed"),
            ],
            stats: Stats::default(),
        };
        assert_eq!(
            child_result("c", &child).ok(),
            Some(SubtaskOutcome::Failed(format!(
                "child task c {}: boom; every subtask failed",
                status.as_str()
            )))
        );
    }
}
