//! The sweeper finds a task stuck without progress while subtasks are pending (its subtask's
//! message lost), and leaves alone a task that is slow but moving (docs/reliability.md, "Stuck
//! tasks"; issue 20, point 4).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    observe::{free_address, Scrape},
    TestEnv, WAIT,
};
use lapin::{options::QueuePurgeOptions, types::ShortString, BasicProperties};
use serde_json::{json, Value};

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
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current: Option<String> = redis::cmd("HGET")
            .arg(format!("chorus:{{{id}}}:task"))
            .arg("state")
            .query_async(&mut redis)
            .await
            .unwrap();
        if current.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} never reached state {state} (now {current:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
