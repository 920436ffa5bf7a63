//! Rolling out a kind one service at a time (docs/operations.md, "Rolling out a kind"): the stock
//! services and `chorus-custom` (examples/custom-kind, which adds `primes`) side by side, and
//! two builds of `chorus-custom` with different definitions of `primes` (`PRIMES_REVISION`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::TestEnv;
use serde_json::Value;

/// A `primes` task: 8 subtasks, 9592 primes.
const PRIMES: &str = r#"{"limit": 100000, "parts": 8}"#;

/// How long a test waits for one outcome.
const OUTCOME_SECS: &str = "90";

/// Submits a `primes` task with one attempt per subtask (a failure could not be retried, and a
/// deferral must not use it up); returns its id.
async fn submit_primes(env: &TestEnv) -> String {
    let (code, stdout) = env
        .cli(&[
            "submit",
            "--kind",
            "primes",
            "--input",
            PRIMES,
            "--max-attempts",
            "1",
        ])
        .await;
    assert_eq!(code, 0, "{stdout}");
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    reply["id"].as_str().unwrap().to_owned()
}

/// The outcome of task `id`, once it has one; asserts it succeeded with the right count and no
/// attempt beyond the first.
async fn succeeded(env: &TestEnv, id: &str) -> Value {
    let (code, stdout) = env
        .cli(&[
            "watch",
            id,
            "--timeout-secs",
            OUTCOME_SECS,
            "--wait-unknown-secs",
            OUTCOME_SECS,
        ])
        .await;
    let outcome: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("task {id}: no outcome ({e}): {stdout}"));
    assert_eq!(code, 0, "task {id}: {outcome:#}");
    assert_eq!(outcome["status"], "succeeded", "task {id}: {outcome:#}");
    assert_eq!(outcome["output"]["primes"], 9592, "task {id}: {outcome:#}");
    assert_eq!(outcome["stats"]["retries"], 0, "task {id}: {outcome:#}");
    outcome
}

/// Waits until `chorus kinds` shows `count` live services.
async fn wait_for_services(env: &TestEnv, count: usize) -> Value {
    for _ in 0..100 {
        let (code, stdout) = env.cli(&["kinds"]).await;
        assert_eq!(code, 0, "{stdout}");
        let kinds: Value = serde_json::from_str(&stdout).unwrap();
        if kinds["services"].as_u64() == Some(count as u64) {
            return kinds;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} services never announced themselves");
}

/// Times `needle` appears in the log of child `index`.
fn said(env: &TestEnv, index: usize, needle: &str) -> usize {
    env.log_of(index).matches(needle).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_kind_rolled_out_one_service_at_a_time_loses_no_task() {
    let mut env = TestEnv::new("rollout-new").await;
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    let worker = env.spawn("chorus-worker", &[]);
    let synthesizer = env.spawn("chorus-synthesizer", &[]);
    wait_for_services(&env, 3).await;
    let mut ids = Vec::new();
    // One custom service at a time, with tasks submitted in between: each waits for a
    // service that has `primes` instead of being rejected or failed.
    env.spawn("chorus-custom", &["worker"]);
    wait_for_services(&env, 4).await;
    for _ in 0..3 {
        ids.push(submit_primes(&env).await);
    }
    env.spawn("chorus-custom", &["orchestrator"]);
    wait_for_services(&env, 5).await;
    for _ in 0..3 {
        ids.push(submit_primes(&env).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.spawn("chorus-custom", &["synthesizer"]);
    let kinds = wait_for_services(&env, 6).await;
    for _ in 0..3 {
        ids.push(submit_primes(&env).await);
    }
    for id in &ids {
        succeeded(&env, id).await;
    }
    // Each stock service said it once, whatever the number of messages it passed on.
    assert_eq!(
        said(&env, orchestrator, "this orchestrator lacks the kind"),
        1,
        "{}",
        env.log_of(orchestrator)
    );
    assert!(said(&env, worker, "this worker lacks the kind") <= 1);
    assert!(said(&env, synthesizer, "this synthesizer lacks the definition") <= 1);
    // `chorus kinds` shows primes served by the three custom services, one definition.
    let primes = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "primes")
        .unwrap();
    assert_eq!(
        primes["definitions"].as_array().unwrap().len(),
        1,
        "{kinds:#}"
    );
    assert_eq!(
        primes["definitions"][0]["served_by"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{kinds:#}"
    );
    assert_eq!(primes["definitions"][0]["steps"]["handle"], "rust");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_no_live_service_knows_is_rejected_at_once_naming_the_known_kinds() {
    let mut env = TestEnv::new("rollout-unknown").await;
    env.start_system(1);
    wait_for_services(&env, 3).await;
    let started = std::time::Instant::now();
    let (code, stdout) = env
        .cli(&["submit", "--kind", "primes", "--input", PRIMES, "--wait"])
        .await;
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("range-sum, report, wordfreq"), "{stdout}");
    // A live orchestrator's kinds count as known, and nothing is deferred for a kind that no
    // live service has.
    env.spawn("chorus-custom", &["orchestrator"]);
    wait_for_services(&env, 4).await;
    let (code, stdout) = env
        .cli(&["submit", "--kind", "nope", "--input", "{}", "--wait"])
        .await;
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("primes, range-sum, report, wordfreq"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "rejections took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_definition_runs_each_task_on_the_definition_it_was_planned_with() {
    let mut env = TestEnv::new("rollout-changed").await;
    let one: &[(&str, &str)] = &[("PRIMES_REVISION", "1")];
    let two: &[(&str, &str)] = &[("PRIMES_REVISION", "2")];
    let orchestrator_one = env.spawn_with("chorus-custom", &["orchestrator"], one);
    let synthesizer_one = env.spawn_with("chorus-custom", &["synthesizer"], one);
    env.spawn_with("chorus-custom", &["worker"], one);
    // The new build's worker comes first: it leaves revision 1's subtasks to the old one.
    let worker_two = env.spawn_with("chorus-custom", &["worker"], two);
    let kinds = wait_for_services(&env, 4).await;
    assert!(
        kinds.to_string().contains("2 definitions are live"),
        "{kinds:#}"
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit_primes(&env).await);
    }
    for id in &ids {
        let outcome = succeeded(&env, id).await;
        assert_eq!(outcome["output"]["revisions"], serde_json::json!(["1"]));
        assert_eq!(outcome["output"]["synthesized_by"], "1");
    }
    assert_eq!(
        said(&env, worker_two, "another definition of the kind"),
        1,
        "{}",
        env.log_of(worker_two)
    );
    // Then the new orchestrator and synthesizer, and the old orchestrator goes: tasks are
    // planned with revision 2, run by the new worker, synthesized by the new synthesizer
    // even when the old one (still live) records their last result.
    env.spawn_with("chorus-custom", &["orchestrator"], two);
    env.spawn_with("chorus-custom", &["synthesizer"], two);
    wait_for_services(&env, 6).await;
    assert_eq!(
        env.terminate(orchestrator_one, Duration::from_secs(20)),
        Some(0)
    );
    wait_for_services(&env, 5).await;
    let mut ids = Vec::new();
    // Each task's last result goes to either synthesizer: with six, the old one almost surely
    // gets some and must hand them over.
    for _ in 0..6 {
        ids.push(submit_primes(&env).await);
    }
    for id in &ids {
        let outcome = succeeded(&env, id).await;
        assert_eq!(outcome["output"]["revisions"], serde_json::json!(["2"]));
        assert_eq!(outcome["output"]["synthesized_by"], "2");
    }
    assert!(env.is_running(synthesizer_one));
    assert!(said(&env, synthesizer_one, "lacks the definition") <= 1);
}
