//! The sweeper finds a task stuck without progress while subtasks are pending (its subtask's
//! message lost), leaves alone a task that is slow but moving, and a subtask waiting out its
//! retry delay in a delay queue (docs/reliability.md, "Stuck tasks"; issue 20, point 4). The
//! repairs under real faults — a subtask dead-lettered at the broker's delivery limit, a deleted
//! message, a backlog — are scenario sw1 of `faults_sweep.rs`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    msgpack_to_json,
    observe::{free_address, Scrape},
    TestEnv, WAIT,
};
use futures::StreamExt;
use lapin::{options::QueuePurgeOptions, types::ShortString, BasicProperties};
use serde_json::{json, Value};

/// How long the delay-queue test waits for its outcome (its retry waits 3 s).
const OUTCOME_WAIT: Duration = Duration::from_secs(30);

const SWEEP_FLAGS: [&str; 4] = ["--sweep-interval-ms", "200", "--stuck-after-ms", "1500"];

async fn submit(env: &TestEnv, request: &Value) {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(request).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_delivery_mode(2),
        )
        .await;
}

/// Waits (bounded) until task `id`'s hash says `state`.
async fn wait_for_state(env: &TestEnv, id: &str, state: &str) {
    chorus_tests::fault::wait_for_state(env, &format!("chorus:{{{id}}}:task"), state).await;
}

fn stuck_lines(log: &str, id: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("task stuck") && line.contains(&format!("\"{id}\"")))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_subtask_message_is_lost_is_found_stuck_and_a_slow_one_is_not() {
    let mut env = TestEnv::new("sweep").await;
    env.spawn("chorus-orchestrator", &[]);
    let listen = free_address();
    let mut flags = SWEEP_FLAGS.to_vec();
    flags.extend(["--http-listen", &listen]);
    let synthesizer = env.spawn("chorus-synthesizer", &flags);
    // No worker yet: the lost task's subtask waits in its queue, and is then purged.
    submit(
        &env,
        &json!({"kind": "range-sum", "id": "lost", "input": {"start": 0, "end": 10, "parts": 1}}),
    )
    .await;
    wait_for_state(&env, "lost", "running").await;
    let client = env.client().await;
    client
        .channel
        .queue_purge(
            ShortString::from("chorus.subtasks"),
            QueuePurgeOptions::default(),
        )
        .await
        .unwrap();
    // A slow task that moves: a chain of slices of 400 ms each, well under stuck-after.
    env.spawn("chorus-worker", &[]);
    submit(
        &env,
        &json!({"kind": "range-sum", "id": "slow", "input": {"start": 0, "end": 80, "parts": 8, "chain": true, "delay_ms": 400}}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while stuck_lines(&env.log_of(synthesizer), "lost") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never reported task lost as stuck:\n{}",
            env.log_of(synthesizer)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_state(&env, "slow", "finished").await;
    let log = env.log_of(synthesizer);
    assert_eq!(
        stuck_lines(&log, "slow"),
        0,
        "a moving task was reported:\n{log}"
    );
    assert!(log.contains("pending=1"), "{log}");
    let reports = Scrape::of(&listen)
        .await
        .value("chorus_stuck_task_reports_total", &[]);
    assert!(reports >= 1.0, "stuck reports counted: {reports}");
}

/// The `subtask.<status>` events on `events` (a task's, with `subtask_events: true`), with when
/// each came, until the outcome arrives on `replies`; fails after `OUTCOME_WAIT` with `log()`.
/// Submits `request` (with `subtask_events` on) and returns the subtask events seen, each with
/// when it came, and the outcome; `synthesizer`'s log is shown if no outcome comes.
async fn run_watching_events(
    env: &TestEnv,
    request: &Value,
    synthesizer: usize,
) -> (Vec<(Value, tokio::time::Instant)>, Value) {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let mut events = client.events("subtask.*").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_reply_to(ShortString::from(reply_to.as_str()));
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(request).unwrap(),
            properties,
        )
        .await;
    events_until_outcome(&mut events, &mut replies, || env.log_of(synthesizer)).await
}

/// A subtask running longer than the stuck time, and one waiting meanwhile in the worker's
/// prefetch for its handler slot, are unacked messages no queue check sees: the worker marks
/// their task held, and the sweeper leaves it alone; each subtask runs once.
#[tokio::test(flavor = "multi_thread")]
async fn subtasks_running_or_prefetched_longer_than_the_stuck_time_run_once() {
    let mut env = TestEnv::new("sweep-held").await;
    env.spawn("chorus-orchestrator", &[]);
    let listen = free_address();
    let mut flags = SWEEP_FLAGS.to_vec();
    flags.extend(["--http-listen", &listen]);
    let synthesizer = env.spawn("chorus-synthesizer", &flags);
    // One handler slot: the second subtask waits in the prefetch while the first runs 2.5 s,
    // then runs 2.5 s itself; stuck after 1.5 s, swept every 200 ms all along.
    env.spawn("chorus-worker", &["--concurrency", "1"]);
    let request = json!({
        "kind": "range-sum", "id": "held",
        "input": {"start": 0, "end": 10, "parts": 2, "delay_ms": 2500},
        "options": {"subtask_events": true},
    });
    let (seen, outcome) = run_watching_events(&env, &request, synthesizer).await;
    let log = env.log_of(synthesizer);
    assert_eq!(outcome["status"], "succeeded", "{outcome}\n{log}");
    assert_eq!(outcome["output"]["sum"], 45, "{outcome}");
    let mut runs: Vec<String> = seen
        .iter()
        .filter(|(event, _)| event["status"] == "running")
        .map(|(event, _)| event["subtask"].as_str().unwrap().to_owned())
        .collect();
    runs.sort();
    assert_eq!(runs, ["0", "1"], "each subtask ran once:\n{log}");
    assert!(
        stuck_lines(&log, "held") >= 1,
        "the task was not found stuck:\n{log}"
    );
    assert!(
        log.lines().any(
            |line| line.contains("stuck task left alone: a worker holds its subtasks")
                && line.contains("\"held\"")
        ),
        "{log}"
    );
    let republished = Scrape::of(&listen).await.value(
        "chorus_stuck_subtasks_repaired_total",
        &[("action", "republished")],
    );
    assert_eq!(republished, 0.0, "a held subtask was republished:\n{log}");
}

async fn events_until_outcome(
    events: &mut lapin::Consumer,
    replies: &mut lapin::Consumer,
    log: impl Fn() -> String,
) -> (Vec<(Value, tokio::time::Instant)>, Value) {
    let until = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(until, async {
            tokio::select! {
                event = events.next() => (true, event),
                reply = replies.next() => (false, reply),
            }
        })
        .await;
        let Ok((is_event, Some(Ok(delivery)))) = next else {
            panic!(
                "no outcome within {OUTCOME_WAIT:?} (events: {:?}):\n{}",
                seen.iter().map(|(event, _)| event).collect::<Vec<_>>(),
                log()
            );
        };
        let message = msgpack_to_json(&delivery.data);
        if !is_event {
            return (seen, message);
        }
        seen.push((message, tokio::time::Instant::now()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subtask_waiting_in_a_delay_queue_is_not_republished_and_runs_once_when_its_delay_ends() {
    let mut env = TestEnv::new("sweep-delayed").await;
    env.spawn("chorus-orchestrator", &[]);
    let listen = free_address();
    let mut flags = SWEEP_FLAGS.to_vec();
    flags.extend(["--http-listen", &listen]);
    let synthesizer = env.spawn("chorus-synthesizer", &flags);
    // Its one retry waits 3 s (plus jitter) in a delay queue: stuck after 1.5 s, swept every
    // 200 ms meanwhile.
    let retry = [
        "--retry-base-delay-ms",
        "3000",
        "--retry-max-delay-ms",
        "3000",
    ];
    env.spawn("chorus-worker", &retry);
    let request = json!({
        "kind": "range-sum", "id": "delayed",
        "input": {"start": 0, "end": 10, "parts": 1, "fail_attempts": 1},
        "options": {"max_attempts": 2, "subtask_events": true},
    });
    let (seen, outcome) = run_watching_events(&env, &request, synthesizer).await;
    let log = env.log_of(synthesizer);
    assert_eq!(outcome["status"], "succeeded", "{outcome}\n{log}");
    assert_eq!(outcome["output"]["sum"], 45, "{outcome}");
    let runs: Vec<u64> = seen
        .iter()
        .filter(|(event, _)| event["status"] == "running")
        .map(|(event, _)| event["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(runs, [1, 2], "the subtask ran once per attempt:\n{log}");
    let retried = seen
        .iter()
        .find(|(event, _)| event["status"] == "retrying")
        .map(|(_, at)| *at)
        .unwrap();
    let second_run = seen
        .iter()
        .find(|(event, _)| event["status"] == "running" && event["attempt"] == 2)
        .map(|(_, at)| *at)
        .unwrap();
    let waited = second_run - retried;
    assert!(
        waited >= Duration::from_millis(2_900),
        "the retry ran before its delay ended: {waited:?}"
    );
    assert!(
        stuck_lines(&log, "delayed") >= 1,
        "the waiting task was not found stuck:\n{log}"
    );
    assert!(
        log.lines().any(|line| line
            .contains("stuck task left alone: its subtask waits in a delay queue")
            && line.contains("\"delayed\"")),
        "{log}"
    );
    let republished = Scrape::of(&listen).await.value(
        "chorus_stuck_subtasks_repaired_total",
        &[("action", "republished")],
    );
    assert_eq!(republished, 0.0, "a waiting retry was republished:\n{log}");
    eprintln!("the retry ran {waited:?} after it was scheduled");
}
