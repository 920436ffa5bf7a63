//! Unit tests of the synthesizer's pure steps and of the start-up checks of its settings.

use chorus_shared::{
    error::ProtocolError,
    protocol::{Control, ResultMessage, SubtaskOutcome},
    store::ResultStatus,
};

use clap::Parser;

use super::{check_control_route, triage, Config, Refused};

fn result(subtask: &str) -> ResultMessage {
    ResultMessage {
        task: "t".into(),
        subtask: subtask.into(),
        attempts: 1,
        outcome: SubtaskOutcome::Failed("boom".into()),
        spawned: Vec::new(),
        round: 1,
        usage: Vec::new(),
    }
}

#[test]
fn new_results_call_for_nothing_more() {
    let mut refused: Vec<Refused> = Vec::new();
    let triage = triage(vec![result("a")], vec![ResultStatus::New], 10, &mut refused);
    assert!(triage.conflicts.is_empty());
    assert_eq!(triage.too_many, None);
    assert!(!triage.duplicate);
    assert!(refused.is_empty());
}

#[test]
fn each_status_is_sorted_out() {
    let mut refused: Vec<Refused> = Vec::new();
    let results = ["a", "b", "c", "d", "e"].map(result).to_vec();
    let statuses = vec![
        ResultStatus::Duplicate,
        ResultStatus::TooManySubtasks { would_have: 12 },
        ResultStatus::TooManySubtasks { would_have: 13 },
        ResultStatus::SpawnConflict {
            reason: "id taken".into(),
        },
        ResultStatus::UnknownSubtask,
    ];
    let triage = triage(results, statuses, 10, &mut refused);
    assert!(triage.duplicate);
    // The first result over the limit names it.
    assert_eq!(
        triage.too_many.as_deref(),
        Some(
            "spawn limit exceeded: subtask b would bring the task to 12 subtasks; the limit is 10 (--max-subtasks)"
        )
    );
    assert_eq!(triage.conflicts.len(), 1);
    assert_eq!(triage.conflicts[0].subtask, "d");
    assert_eq!(
        triage.conflicts[0].outcome,
        SubtaskOutcome::Failed("id taken".into())
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0.subtask, "e");
    assert!(
        matches!(&refused[0].1, ProtocolError::Invalid(message) if message == "task \"t\" has no subtask \"e\"")
    );
}

fn config(args: &[&str]) -> Config {
    Config::try_parse_from(std::iter::once("chorus-synthesizer").chain(args.iter().copied()))
        .expect("flags parse")
}

#[test]
fn the_defaults_are_valid() {
    assert_eq!(config(&[]).validate(), Ok(()));
}

#[test]
fn a_url_that_does_not_parse_is_refused() {
    let refused = config(&["--redis-url", "redis://host:port"]).validate();
    assert!(refused.is_err_and(|message| message.starts_with("--redis-url ")));
}

#[test]
fn a_cancel_counts_only_from_the_submit_or_default_exchange() {
    let cancel = Control::Cancel {
        task: "t".into(),
        reason: None,
    };
    assert!(check_control_route(&cancel, "").is_ok());
    assert!(check_control_route(&cancel, "chorus.submit").is_ok());
    for exchange in [
        "chorus.retry",
        "chorus.outputs",
        "chorus.delay",
        "amq.direct",
    ] {
        let error = check_control_route(&cancel, exchange).expect_err("refused");
        assert!(
            error.to_string().contains("default exchange"),
            "{exchange}: {error}"
        );
    }
}

#[test]
fn deadline_timers_come_back_through_the_delay_path() {
    let timer = Control::Deadline { task: "t".into() };
    assert!(check_control_route(&timer, "chorus.retry").is_ok());
    assert!(check_control_route(&timer, "").is_ok());
}

#[test]
fn results_are_taken_256_at_a_time_by_default() {
    // Handling a result message is mostly waiting on one Redis script: a low bound left the
    // results queue filling while the worker outran it (issue 20).
    assert_eq!(config(&[]).concurrency, 256);
}
