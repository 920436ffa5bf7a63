//! End-to-end tests of dynamic orchestration through the real binaries over real RabbitMQ and
//! Redis: worker types, dependencies, caps, spawning, child tasks, refinement rounds,
//! cancellation, deadlines, rate limits and progress.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    msgpack_to_json, next_message,
    observe::{free_address, Scrape},
    wait_for_running, TestEnv,
};
use lapin::{message::Delivery, types::ShortString, BasicProperties, Consumer};
use serde_json::{json, Value};

const RETRY_FLAGS: [&str; 4] = ["--retry-base-delay-ms", "20", "--retry-max-delay-ms", "200"];

fn sum_of(start: i64, end: i64) -> i64 {
    (start..end).sum()
}

/// Publishes a request with a private reply queue; the outcome comes from [`outcome_of`].
async fn submit(env: &TestEnv, request: &Value) -> Consumer {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, replies) = client.reply_queue().await;
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(request).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(reply_to.as_str())),
        )
        .await;
    replies
}

async fn outcome_of(replies: &mut Consumer) -> Value {
    let reply: Delivery = next_message(replies).await;
    msgpack_to_json(&reply.data)
}

async fn run_task(env: &TestEnv, request: Value) -> Value {
    let mut replies = submit(env, &request).await;
    outcome_of(&mut replies).await
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_pass_outputs_along_a_chain() {
    let mut env = TestEnv::new("chain").await;
    env.start_system(2);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "chain", "input": {"start": 0, "end": 1000, "parts": 10, "chain": true, "after": [[9, 0]]}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 1000));
    // Each slice's total adds its dependencies' totals: slice 9 depends on 8 (a prefix sum of
    // everything before it) and on 0 again.
    assert_eq!(
        outcome["output"]["last_total"],
        sum_of(0, 1000) + sum_of(0, 100)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_cycle_rejects_the_task_naming_it() {
    let mut env = TestEnv::new("cycle").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "cycle", "input": {"start": 0, "end": 10, "parts": 4, "after": [[1, 2], [2, 3], [3, 1]]}}),
    )
    .await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("dependency cycle: 1 → 2 → 3 → 1"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_dependency_skips_its_dependents() {
    let mut env = TestEnv::new("skip").await;
    env.start_system(1);
    let events_client = env.client().await;
    events_client.wait_for_queue("chorus.tasks").await;
    let mut skip_events = events_client.events("subtask.skipped").await;
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "skip", "input": {"start": 0, "end": 100, "parts": 5, "chain": true, "poison": [2]},
               "options": {"max_attempts": 1, "on_failure": "continue", "subtask_events": true}}),
    )
    .await;
    let mut skipped_events = Vec::new();
    for _ in 0..2 {
        let event = msgpack_to_json(&next_message(&mut skip_events).await.data);
        skipped_events.push(event["subtask"].as_str().unwrap().to_owned());
    }
    skipped_events.sort();
    assert_eq!(skipped_events, ["3", "4"]);
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 2);
    assert_eq!(outcome["stats"]["failed"], 1);
    assert_eq!(outcome["stats"]["skipped"], 2);
    assert_eq!(outcome["output"]["sum"], sum_of(0, 40));
    let errors: Vec<(String, String)> = outcome["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["subtask"].as_str().unwrap_or("").to_owned(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(errors[0].0, "2");
    assert_eq!(errors[1].0, "3");
    assert!(errors[1].1.contains("skipped: dependency 2"), "{errors:?}");
    assert!(errors[2].1.contains("skipped: dependency 3"), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_cap_bounds_subtasks_in_flight() {
    let mut env = TestEnv::new("cap").await;
    env.start_system(2);
    let input = json!({"start": 0, "end": 1200, "parts": 12, "delay_ms": 150, "trace": true});
    let capped = run_task(
        &env,
        json!({"kind": "range-sum", "id": "capped", "input": input, "options": {"max_concurrency": 3}}),
    )
    .await;
    assert_eq!(capped["status"], "succeeded", "{capped}");
    assert_eq!(capped["output"]["sum"], sum_of(0, 1200));
    let peak = capped["output"]["peak_in_flight"].as_u64().unwrap();
    assert!((2..=3).contains(&peak), "peak {peak} with a cap of 3");
    // The same task without a cap runs wider: the measurement can see the difference.
    let free = run_task(
        &env,
        json!({"kind": "range-sum", "id": "free", "input": input}),
    )
    .await;
    let peak = free["output"]["peak_in_flight"].as_u64().unwrap();
    assert!(peak > 3, "uncapped peak {peak}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_types_route_to_their_own_pools_and_status_says_when_none_serves() {
    let mut env = TestEnv::new("types").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let mut alpha_args = vec!["--types", "alpha:4"];
    alpha_args.extend(RETRY_FLAGS);
    let alpha = env.spawn("chorus-worker", &alpha_args);
    let mut replies = submit(
        &env,
        &json!({"kind": "range-sum", "id": "typed", "input": {"start": 0, "end": 600, "parts": 6, "types": ["alpha", "beta"]}}),
    )
    .await;
    // Alpha's three settle; beta's three wait, and status says nobody serves beta.
    let mut note = String::new();
    let mut last = String::new();
    for _ in 0..100 {
        let (code, out) = env.cli(&["status", "typed"]).await;
        last = format!("{code} {out}");
        if code == 0 {
            let status: Value = serde_json::from_str(&out).unwrap();
            let beta = status["types"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["worker_type"] == "beta")
                .cloned();
            let alpha_done = status["types"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["worker_type"] == "alpha" && t["succeeded"] == 3);
            if let Some(beta) = beta {
                if alpha_done && beta["note"].is_string() {
                    assert_eq!(beta["total"], 3);
                    assert_eq!(beta["consumers"], 0);
                    note = beta["note"].as_str().unwrap().to_owned();
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        note.contains("no worker serves type \"beta\""),
        "status never said beta is unserved; last status: {last}"
    );
    let mut beta_args = vec!["--types", "beta"];
    beta_args.extend(RETRY_FLAGS);
    let beta = env.spawn("chorus-worker", &beta_args);
    let outcome = outcome_of(&mut replies).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 600));
    assert!(env.log_of(alpha).contains("queue=chorus.subtasks.alpha"));
    assert!(!env.log_of(alpha).contains("chorus.subtasks.beta"));
    assert!(env.log_of(beta).contains("queue=chorus.subtasks.beta"));
}

#[tokio::test(flavor = "multi_thread")]
async fn handlers_spawn_work_and_the_task_waits_for_it() {
    let mut env = TestEnv::new("spawn").await;
    env.start_system(2);
    // 4 slices of 250 integers split down to slices of at most 40: 4 + 4·(2 + 4 + 8) subtasks.
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "spawn", "input": {"start": 0, "end": 1000, "parts": 4, "split_above": 40}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 1000));
    assert_eq!(outcome["stats"]["subtasks"], 4 + 4 * (2 + 4 + 8));
}

#[tokio::test(flavor = "multi_thread")]
async fn spawning_past_a_limit_fails_the_task_naming_the_limit() {
    let mut env = TestEnv::new("spawnlimit").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &RETRY_FLAGS);
    env.spawn(
        "chorus-synthesizer",
        &["--max-spawn-depth", "2", "--max-subtasks", "1000"],
    );
    let deep = run_task(
        &env,
        json!({"kind": "range-sum", "id": "deep", "input": {"start": 0, "end": 1000, "parts": 1, "split_above": 10}}),
    )
    .await;
    assert_eq!(deep["status"], "failed", "{deep}");
    let message = deep["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("--max-spawn-depth"), "{message}");
    assert!(message.contains("depth 3; the limit is 2"), "{message}");
    // 400 slices of two integers each spawn two halves: 1,200 subtasks in all, over 1,000.
    let wide = run_task(
        &env,
        json!({"kind": "range-sum", "id": "wide", "input": {"start": 0, "end": 800, "parts": 400, "split_above": 1}}),
    )
    .await;
    assert_eq!(wide["status"], "failed", "{wide}");
    let message = wide["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("the limit is 1000 (--max-subtasks)"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn child_tasks_settle_their_parent_subtask() {
    let mut env = TestEnv::new("child").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "parent", "input": {"start": 0, "end": 400, "parts": 4, "children": [1, 3]}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 400));
    let (code, out) = env.cli(&["result", "parent/1"]).await;
    assert_eq!(code, 0, "{out}");
    let child: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(child["output"]["sum"], sum_of(100, 200));
    assert_eq!(child["stats"]["subtasks"], 2);
    // A submitter cannot pose as a child to settle someone else's subtask.
    let forged = run_task(
        &env,
        json!({"kind": "range-sum", "id": "parent/9", "input": {"start": 0, "end": 10, "parts": 1},
               "parent": {"task": "parent", "subtask": "9"}}),
    )
    .await;
    assert_eq!(forged["status"], "rejected", "{forged}");
    assert!(forged["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("did not start a child task"));
    // `chorus watch` on a finished task prints its outcome and exits with its code.
    let (code, out) = env.cli(&["watch", "parent"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["id"], "parent");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_parent_cancels_its_children() {
    let mut env = TestEnv::new("childcancel").await;
    env.start_system(1);
    let mut replies = submit(
        &env,
        &json!({"kind": "range-sum", "id": "family", "input": {"start": 0, "end": 100, "parts": 2, "children": [0, 1], "delay_ms": 5000}}),
    )
    .await;
    // Both children exist before the parent is cancelled.
    for child in ["family/0", "family/1"] {
        let mut known = false;
        for _ in 0..100 {
            if env.cli(&["status", child]).await.0 == 0 {
                known = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(known, "child {child} never started");
    }
    let (code, out) = env.cli(&["cancel", "family"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(outcome_of(&mut replies).await["status"], "cancelled");
    for child in ["family/0", "family/1"] {
        let mut status = Value::Null;
        for _ in 0..50 {
            let (code, out) = env.cli(&["result", child]).await;
            if code != 4 {
                status = serde_json::from_str::<Value>(&out).unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status["status"], "cancelled", "{child}: {status}");
        let reason = status["errors"][0]["message"].as_str().unwrap_or("");
        assert!(
            reason.contains("parent task family ended cancelled"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_round_redoes_drafts() {
    let mut env = TestEnv::new("rounds").await;
    env.start_system(1);
    let input = json!({"start": 0, "end": 100, "parts": 5, "drafts": [1, 4]});
    let refined = run_task(
        &env,
        json!({"kind": "range-sum", "id": "refined", "input": input, "options": {"max_rounds": 2}}),
    )
    .await;
    assert_eq!(refined["status"], "succeeded", "{refined}");
    assert_eq!(refined["output"]["sum"], sum_of(0, 100));
    assert_eq!(refined["stats"]["rounds"], 2);
    assert_eq!(refined["stats"]["subtasks"], 5);
    // Without a second round the drafts (each off by one) stand.
    let single = run_task(
        &env,
        json!({"kind": "range-sum", "id": "single", "input": input}),
    )
    .await;
    assert_eq!(single["output"]["sum"], sum_of(0, 100) + 2);
    assert_eq!(single["stats"]["rounds"], 1);
    // A child task sent back runs again as a new child of the round, beside the first one.
    let with_child = run_task(
        &env,
        json!({"kind": "range-sum", "id": "family", "options": {"max_rounds": 2},
               "input": {"start": 0, "end": 100, "parts": 4, "children": [2], "drafts": [1, 2]}}),
    )
    .await;
    assert_eq!(with_child["status"], "succeeded", "{with_child}");
    assert_eq!(with_child["output"]["sum"], sum_of(0, 100));
    assert_eq!(with_child["stats"]["rounds"], 2);
    for (child, sum, draft) in [
        ("family/2", sum_of(50, 75) + 1, Value::Bool(true)),
        ("family/2~r2", sum_of(50, 75), Value::Null),
    ] {
        let (code, out) = env.cli(&["result", child]).await;
        assert_eq!(code, 0, "{child}: {out}");
        let outcome: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(outcome["output"]["sum"], sum, "{child}: {outcome}");
        assert_eq!(outcome["output"]["draft"], draft, "{child}: {outcome}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_queued_and_running_subtasks() {
    let mut env = TestEnv::new("cancel").await;
    let listen = free_address();
    env.spawn("chorus-orchestrator", &[]);
    let mut worker = vec!["--http-listen", listen.as_str()];
    worker.extend(RETRY_FLAGS);
    env.spawn("chorus-worker", &worker);
    env.spawn("chorus-synthesizer", &[]);
    let events_client = env.client().await;
    events_client.wait_for_queue("chorus.tasks").await;
    let mut running = events_client.events("subtask.running").await;
    let mut replies = submit(
        &env,
        &json!({"kind": "range-sum", "id": "doomed", "input": {"start": 0, "end": 100, "parts": 40, "delay_ms": 10_000},
                "options": {"max_concurrency": 4, "subtask_events": true}}),
    )
    .await;
    wait_for_running(&mut running, "doomed", 4).await;
    let (code, out) = env
        .cli(&["cancel", "doomed", "--reason", "changed my mind"])
        .await;
    assert_eq!(code, 0, "{out}");
    let outcome = outcome_of(&mut replies).await;
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    assert_eq!(outcome["errors"][0]["message"], "changed my mind");
    assert_eq!(outcome["stats"]["subtasks"], 40);
    assert_eq!(outcome["stats"]["succeeded"], 0);
    let (code, _) = env.cli(&["result", "doomed"]).await;
    assert_eq!(code, 5);
    // Running handlers saw their token: their slots are free long before their 10 s sleep
    // would have ended.
    let busy = || async {
        Scrape::of(&listen).await.value(
            "chorus_worker_slots",
            &[("worker_type", "default"), ("state", "busy")],
        )
    };
    let mut freed = false;
    for _ in 0..50 {
        if busy().await == 0.0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "running handlers were not cancelled");
    // One line for the cancelled task in the worker's log, not one per stopped subtask.
    let log = env.log_of(1);
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("doomed")).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("task is over; stopping its running handlers"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_fails_the_task_with_what_finished() {
    let mut env = TestEnv::new("deadline").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "late", "input": {"start": 0, "end": 100, "parts": 6, "delay_ms": 8000},
               "options": {"deadline_ms": 700}}),
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert!(
        outcome["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("deadline exceeded"),
        "{outcome}"
    );
    // The task ended before any subtask could finish its 8 s sleep.
    assert_eq!(outcome["stats"]["succeeded"], 0, "{outcome}");
    let duration_ms = outcome["stats"]["duration_ms"].as_u64().unwrap();
    assert!(duration_ms < 8000, "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_holds_across_worker_processes() {
    let mut env = TestEnv::new("ratelimit").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    for _ in 0..2 {
        let mut args = vec!["--types", "api:8", "--rate-limit", "api=10"];
        args.extend(RETRY_FLAGS);
        env.spawn("chorus-worker", &args);
    }
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "limited", "input": {"start": 0, "end": 2000, "parts": 20, "types": ["api"], "trace": true}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 2000));
    // 20 starts at 10/s with a burst of 1 span at least 1.9 s; unlimited they take milliseconds.
    let duration = outcome["stats"]["duration_ms"].as_u64().unwrap();
    assert!(duration >= 1800, "20 subtasks at 10/s took {duration} ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_demo_plans_writes_reviews_and_assembles() {
    let mut env = TestEnv::new("report").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let mut args = vec!["--types", "writer:4,editor:1"];
    args.extend(RETRY_FLAGS);
    env.spawn("chorus-worker", &args);
    let events_client = env.client().await;
    events_client.wait_for_queue("chorus.tasks").await;
    let mut events = events_client.events("subtask.*").await;
    let outcome = run_task(
        &env,
        json!({"kind": "report", "id": "report", "input": {"topic": "Chorus", "sections": ["Background", "Design", "Risks"]},
               "options": {"max_rounds": 2, "subtask_events": true}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["stats"]["rounds"], 2);
    assert_eq!(outcome["stats"]["subtasks"], 4);
    let document = outcome["output"]["document"].as_str().unwrap();
    assert!(document.starts_with("# Chorus\n"), "{document}");
    for title in ["## Background", "## Design", "## Risks"] {
        assert!(document.contains(title), "{title} missing: {document}");
    }
    // The weak second section was sent back and rewritten with the feedback; the summary was
    // redone after it and counts the rewritten words.
    assert!(
        document.contains("Revised after review: round 1 found"),
        "{document}"
    );
    let words = outcome["output"]["words"].as_u64().unwrap();
    let summary_words = "This report on Chorus covers Background, Design, Risks in N words."
        .split_whitespace()
        .count() as u64;
    assert!(
        document.contains(&format!("in {} words.", words - summary_words)),
        "{document}"
    );
    // Every run announced itself: 3 sections and the summary, then the rewrite and the new
    // summary, each `running` then `succeeded`.
    let mut seen: Vec<(String, String)> = Vec::new();
    while let Ok(delivery) =
        tokio::time::timeout(Duration::from_secs(2), next_message(&mut events)).await
    {
        let event = msgpack_to_json(&delivery.data);
        assert_eq!(
            delivery.routing_key.as_str(),
            format!("subtask.{}", event["status"].as_str().unwrap())
        );
        seen.push((
            event["subtask"].as_str().unwrap().to_owned(),
            event["status"].as_str().unwrap().to_owned(),
        ));
    }
    let succeeded = seen.iter().filter(|(_, s)| s == "succeeded").count();
    let running = seen.iter().filter(|(_, s)| s == "running").count();
    assert_eq!((running, succeeded), (6, 6), "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|(id, s)| id == "summary" && s == "succeeded")
            .count(),
        2
    );
}
