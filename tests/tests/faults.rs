//! The fault-injection suite, services killed or crashing: real processes and a private
//! RabbitMQ + Redis per test, workers, synthesizers and orchestrators SIGKILLed, aborted at
//! failpoints and signalled while tasks run; the oracle then checks that nothing was lost,
//! counted twice, stuck or wrong. The other kinds of fault are in `faults_broker.rs`,
//! `faults_redis.rs`, `faults_input.rs` and `faults_pool.rs`; docs/reliability.md lists what each
//! scenario proves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    fault::{
        assert_clean, check, collect_replies, collect_stored, msgpack, note, start, submit,
        supervise_until_reply, tasks, wait_for_progress, wait_for_state, wait_for_topology,
        worker_args, Cluster, Planned, DEADLINE,
    },
    wait_for_running, TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::json;

/// The same tasks, asking for `subtask.<status>` events.
fn with_subtask_events(tasks: Vec<Planned>) -> Vec<Planned> {
    tasks
        .into_iter()
        .map(|task| Planned {
            options: json!({"subtask_events": true}),
            ..task
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s01_a_killed_worker_s_deliveries_finish_elsewhere() {
    let cluster = Cluster::start("s01");
    let (mut env, client) = start(&cluster, "s01").await;
    env.spawn("chorus-orchestrator", &[]);
    let victim = env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s01", 6, 20, 400);
    submit(&client, &run, &reply_to).await;
    wait_for_progress(&env, &run, 10).await;
    env.kill(victim);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("worker SIGKILL", &report);
    assert!(
        collected.counts.values().all(|&n| n == 1),
        "{:?}",
        collected.counts
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s02_a_synthesizer_killed_while_results_stream_in_loses_nothing() {
    let cluster = Cluster::start("s02");
    let (mut env, client) = start(&cluster, "s02").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-worker", &worker_args());
    let synthesizer = env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s02", 8, 40, 20);
    submit(&client, &run, &reply_to).await;
    wait_for_progress(&env, &run, 40).await;
    env.kill(synthesizer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.spawn("chorus-synthesizer", &[]);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("synthesizer SIGKILL while results stream", &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn s02_a_synthesizer_crashing_at_each_step_of_the_fan_in_still_gives_one_outcome() {
    let cluster = Cluster::start("s02b");
    let (mut env, client) = start(&cluster, "s02b").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    client.wait_for_queue("chorus.tasks").await;
    for (round, failpoint) in [
        "synthesizer.after-record",
        "synthesizer.after-store-outcome",
    ]
    .iter()
    .enumerate()
    {
        let (reply_to, mut replies) = client.reply_queue().await;
        let run = tasks(&format!("s02b-{round}"), 1, 5, 0);
        let crashing = env.spawn_with(
            "chorus-synthesizer",
            &[],
            &[("CHORUS_FAILPOINTS", &format!("{failpoint}=abort"))],
        );
        submit(&client, &run, &reply_to).await;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while env.is_running(crashing) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "failpoint {failpoint} never hit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let healthy = env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
        let collected = collect_replies(&mut replies, 1, DEADLINE).await;
        let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
        assert_clean(&format!("synthesizer abort at {failpoint}"), &report);
        assert_eq!(
            collected.counts.get(&run[0].id),
            Some(&1),
            "exactly one outcome after {failpoint}"
        );
        env.kill(healthy);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s03_an_orchestrator_crashing_after_recording_the_plan_completes_it_after_restart() {
    let cluster = Cluster::start("s03");
    let (mut env, client) = start(&cluster, "s03").await;
    let crashing = env.spawn_with(
        "chorus-orchestrator",
        &["--publish-batch", "10"],
        &[(
            "CHORUS_FAILPOINTS",
            "orchestrator.after-plan-recorded=abort",
        )],
    );
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s03", 1, 200, 0);
    submit(&client, &run, &reply_to).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while env.is_running(crashing) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failpoint never hit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.spawn("chorus-orchestrator", &["--lease-ms", "1000"]);
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("orchestrator abort after recording the plan", &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn s11_sigterm_drains_a_worker_and_a_second_signal_exits_at_once() {
    let cluster = Cluster::start("s11");
    let (mut env, client) = start(&cluster, "s11").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    // Four slots and the default prefetch (64): the worker holds all eight subtasks, and the
    // four waiting for a slot at SIGTERM must go back to the queue, not start in the grace.
    let draining = env.spawn(
        "chorus-worker",
        &["--concurrency", "4", "--shutdown-grace-secs", "20"],
    );
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let mut running = client.events("subtask.running").await;
    let run = with_subtask_events(tasks("s11", 1, 8, 1500));
    submit(&client, &run, &reply_to).await;
    wait_for_running(&mut running, "s11-0", 4).await;
    // Four subtasks are running; SIGTERM lets them finish, then the worker exits 0.
    let code = tokio::task::block_in_place(|| env.terminate(draining, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "a drained worker exits 0");
    // Their results went out before the exit; the synthesizer records them on its own time
    // (no other worker runs yet, so only the drained one can have sent them).
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let settled: u64 = redis::cmd("HGET")
            .arg("chorus:{s11-0}:task")
            .arg("succeeded")
            .query_async(&mut redis)
            .await
            .unwrap();
        if settled >= 4 || tokio::time::Instant::now() > deadline {
            break settled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        settled, 4,
        "the four running subtasks finished before the exit"
    );
    let helper = env.spawn("chorus-worker", &worker_args());
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("graceful worker shutdown", &report);
    env.kill(helper);
    assert_eq!(
        report.duplicate_executions, 0,
        "a drained worker hands nothing back twice"
    );

    // A second signal does not wait for the grace period.
    let run = with_subtask_events(tasks("s11b", 1, 2, 30_000));
    let stubborn = env.spawn(
        "chorus-worker",
        &["--concurrency", "4", "--shutdown-grace-secs", "60"],
    );
    submit(&client, &run, &reply_to).await;
    wait_for_running(&mut running, "s11b-0", 2).await;
    let first = tokio::task::block_in_place(|| env.terminate(stubborn, Duration::from_millis(300)));
    assert_eq!(
        first, None,
        "with 30 s subtasks in hand, the first signal waits for them"
    );
    let code = tokio::task::block_in_place(|| env.terminate(stubborn, Duration::from_secs(5)));
    assert!(
        code.is_some() && code != Some(0),
        "the second signal ends the worker at once: {code:?}"
    );
}

fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) % n
}

#[tokio::test(flavor = "multi_thread")]
async fn s12_soak_with_random_kills() {
    let long = std::env::var("CHORUS_SOAK").is_ok_and(|v| v == "long");
    let (count, parts, rounds) = if long { (200, 100, 12) } else { (30, 40, 4) };
    let cluster = Cluster::start("s12");
    cluster.prepare_for_broker_restarts().await;
    let (mut env, client) = start(&cluster, "s12").await;
    let mut orchestrator = env.spawn(
        "chorus-orchestrator",
        &["--lease-ms", "2000", "--publish-timeout-ms", "5000"],
    );
    let mut workers = vec![
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-worker", &worker_args()),
    ];
    let mut synthesizer = env.spawn(
        "chorus-synthesizer",
        &["--lease-ms", "2000", "--publish-timeout-ms", "5000"],
    );
    wait_for_topology(&client).await;
    let run = tasks("s12", count, parts, 5);
    submit(&client, &run, "nobody-listens").await;
    drop(client);
    let mut faults = Vec::new();
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(800 + random_below(700))).await;
        match (round + random_below(4) as usize) % 4 {
            0 => {
                let victim = workers.remove(random_below(workers.len() as u64) as usize);
                env.kill(victim);
                workers.push(env.spawn("chorus-worker", &worker_args()));
                faults.push("worker");
            }
            1 => {
                env.kill(synthesizer);
                synthesizer = env.spawn(
                    "chorus-synthesizer",
                    &["--lease-ms", "2000", "--publish-timeout-ms", "5000"],
                );
                faults.push("synthesizer");
            }
            2 => {
                env.kill(orchestrator);
                orchestrator = env.spawn(
                    "chorus-orchestrator",
                    &["--lease-ms", "2000", "--publish-timeout-ms", "5000"],
                );
                faults.push("orchestrator");
            }
            _ => {
                cluster.kill_rabbitmq();
                cluster.start_missing();
                faults.push("rabbitmq");
            }
        }
    }
    let outcomes = collect_stored(
        &env,
        &run,
        if long {
            Duration::from_secs(900)
        } else {
            DEADLINE
        },
    )
    .await;
    let report = check(&env, &run, &outcomes, 0).await;
    note(&format!(
        "[soak] {count} tasks x {parts} subtasks, faults injected: {faults:?}"
    ));
    assert_clean("soak", &report);
}

/// Tasks whose subtasks wait on each other, under a cap, with a review round: the state the
/// fault-free outcome depends on lives in Redis, not in any process.
fn graph_tasks(prefix: &str, count: usize, parts: u32, delay_ms: u64) -> Vec<Planned> {
    tasks(prefix, count, parts, delay_ms)
        .into_iter()
        .enumerate()
        .map(|(i, mut task)| {
            task.poison.clear();
            task.shape = if i % 2 == 0 {
                json!({"chain": true, "drafts": [1, parts - 1]})
            } else {
                json!({"after": [[parts - 1, 0], [parts - 2, 1]], "drafts": [0]})
            };
            task.options = json!({"max_concurrency": 3, "max_rounds": 2});
            task
        })
        .collect()
}

/// Waits until child `index` exits by itself (a failpoint abort).
async fn wait_for_exit(env: &mut TestEnv, index: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while env.is_running(index) {
        assert!(tokio::time::Instant::now() < deadline, "{what} never hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s13_dependencies_caps_and_rounds_survive_synthesizer_and_orchestrator_kills() {
    let cluster = Cluster::start("s13");
    let (mut env, client) = start(&cluster, "s13").await;
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-worker", &worker_args());
    let synthesizer = env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = graph_tasks("s13", 6, 12, 40);
    submit(&client, &run, &reply_to).await;
    wait_for_progress(&env, &run, 20).await;
    env.kill(synthesizer);
    env.kill(orchestrator);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    env.spawn("chorus-orchestrator", &[]);
    wait_for_progress(&env, &run, 45).await;
    let synthesizer = env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.kill(synthesizer);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("graph tasks: synthesizer and orchestrator SIGKILL", &report);
    for outcome in collected.outcomes.values() {
        assert_eq!(outcome["stats"]["rounds"], 2, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s14_a_crash_between_releasing_and_publishing_is_repaired() {
    let cluster = Cluster::start("s14");
    let (mut env, client) = start(&cluster, "s14").await;
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    client.wait_for_queue("chorus.tasks").await;
    // The orchestrator dies right after recording the plan, before publishing anything.
    let (reply_to, mut replies) = client.reply_queue().await;
    let mut run = graph_tasks("s14-plan", 1, 8, 0);
    let crashing = env.spawn_with(
        "chorus-orchestrator",
        &[],
        &[(
            "CHORUS_FAILPOINTS",
            "orchestrator.after-plan-recorded=abort",
        )],
    );
    submit(&client, &run, &reply_to).await;
    wait_for_exit(&mut env, crashing, "orchestrator.after-plan-recorded").await;
    env.spawn("chorus-orchestrator", &["--lease-ms", "1000"]);
    // A synthesizer dies after recording results, with what they released not yet published.
    let later = graph_tasks("s14-release", 2, 8, 0);
    let crashing = env.spawn_with(
        "chorus-synthesizer",
        &[],
        &[("CHORUS_FAILPOINTS", "synthesizer.after-record=abort")],
    );
    submit(&client, &later, &reply_to).await;
    wait_for_exit(&mut env, crashing, "synthesizer.after-record").await;
    run.extend(later);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("crash between release and publish", &report);
}

#[tokio::test(flavor = "multi_thread")]
async fn s15_a_cancel_sent_while_the_synthesizer_is_down_is_served_after_restart() {
    let cluster = Cluster::start("s15");
    let (mut env, client) = start(&cluster, "s15").await;
    env.spawn("chorus-orchestrator", &[]);
    let worker = env.spawn("chorus-worker", &worker_args());
    let synthesizer = env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.control").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s15", 1, 30, 2000);
    submit(&client, &run, &reply_to).await;
    wait_for_state(&env, "chorus:{s15-0}:task", "running").await;
    env.kill(synthesizer);
    let (code, out) = env.cli(&["cancel", "s15-0"]).await;
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.spawn("chorus-synthesizer", &[]);
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    let outcome = collected.outcomes.get("s15-0").expect("an outcome");
    assert_eq!(outcome["status"], "cancelled", "{outcome}");
    assert_eq!(collected.conflicting, 0);
    // The worker drops what is left instead of running it (one line for the task).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !env
        .log_of(worker)
        .contains("task is over; stopping its running handlers")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "running handlers never saw the cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    note("[cancel while the synthesizer is down] served after restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn s16_a_crashed_batch_is_redone_whole_and_counted_once() {
    let cluster = Cluster::start("s16");
    let (mut env, client) = start(&cluster, "s16").await;
    env.spawn("chorus-orchestrator", &[]);
    // One worker dies right after publishing a batch's results, before acking the batch; another
    // is killed while its handlers run; a synthesizer dies after recording a result batch,
    // before acking it.
    let publishing = env.spawn_with(
        "chorus-worker",
        &worker_args(),
        &[("CHORUS_FAILPOINTS", "worker.after-publish-result=abort")],
    );
    let running = env.spawn("chorus-worker", &worker_args());
    let recording = env.spawn_with(
        "chorus-synthesizer",
        &[],
        &[("CHORUS_FAILPOINTS", "synthesizer.after-record=abort")],
    );
    client.wait_for_queue("chorus.tasks").await;
    // Both workers serve before anything is published, so the failpoint's gets batches too.
    client.wait_for_consumers("chorus.subtasks", 2).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let mut run = tasks("s16", 6, 48, 30);
    for task in &mut run {
        task.options = json!({"batch_size": 8});
    }
    submit(&client, &run, &reply_to).await;
    wait_for_exit(&mut env, publishing, "worker.after-publish-result").await;
    wait_for_exit(&mut env, recording, "synthesizer.after-record").await;
    env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    wait_for_progress(&env, &run, 60).await;
    env.kill(running);
    env.spawn("chorus-worker", &worker_args());
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("batches: worker and synthesizer crashes", &report);
    // The batch whose results went out before the crash ran again: its results came twice.
    assert!(report.duplicate_executions > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s17_a_planner_that_crashes_its_orchestrator_gets_the_task_rejected() {
    let cluster = Cluster::start("s17");
    let (mut env, client) = start(&cluster, "s17").await;
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &[]);
    let crash_failpoint = [("CHORUS_FAILPOINTS", "range-sum.plan-crash=abort")];
    let orchestrator_args = ["--max-deliveries", "2", "--lease-ms", "1000"];
    let orchestrator = env.spawn_with("chorus-orchestrator", &orchestrator_args, &crash_failpoint);
    wait_for_topology(&client).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_reply_to(ShortString::from(reply_to.as_str()));
    let request = json!({
        "kind": "range-sum", "id": "s17",
        "input": {"start": 0, "end": 100, "parts": 4, "plan_crashes": true},
    });
    client
        .publish("chorus.tasks", &msgpack(&request), properties.clone())
        .await;

    // Play supervisor: restart the orchestrator each time the planner takes it down.
    let (outcome, crashes) = supervise_until_reply(
        &mut env,
        &mut replies,
        orchestrator,
        ("chorus-orchestrator", &orchestrator_args, &crash_failpoint),
    )
    .await;
    note(&format!(
        "[planner crash] orchestrator crashes before the task was rejected: {crashes}"
    ));
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("planning did not finish in 2 runs"),
        "{message}"
    );
    // The first delivery plans before its claim, uncounted; the two counted runs follow.
    assert_eq!(crashes, 3, "crashes before the task was given up");

    // The same orchestrator serves the next task.
    let request = json!({
        "kind": "range-sum", "id": "s17-after",
        "input": {"start": 0, "end": 100, "parts": 4},
    });
    client
        .publish("chorus.tasks", &msgpack(&request), properties)
        .await;
    let reply = chorus_tests::next_message(&mut replies).await;
    let outcome = chorus_tests::msgpack_to_json(&reply.data);
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], (0..100).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread")]
async fn s18_a_result_redelivered_after_a_review_round_began_does_not_count_in_it() {
    let cluster = Cluster::start("s18");
    let (mut env, client) = start(&cluster, "s18").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    client.wait_for_queue("chorus.tasks").await;
    // A chain whose last subtask is a draft: its result settles round 1 and is sent back. The
    // synthesizer dies once round 2 is published, before acking that result, which the next
    // synthesizer then gets again while the redone subtask runs.
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = graph_tasks("s18", 1, 6, 0);
    let crashing = env.spawn_with(
        "chorus-synthesizer",
        &["--lease-ms", "1000"],
        &[(
            "CHORUS_FAILPOINTS",
            "synthesizer.after-review-published=abort",
        )],
    );
    submit(&client, &run, &reply_to).await;
    wait_for_exit(&mut env, crashing, "synthesizer.after-review-published").await;
    env.spawn("chorus-synthesizer", &["--lease-ms", "1000"]);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("a crash after publishing a review round", &report);
    for outcome in collected.outcomes.values() {
        assert_eq!(outcome["stats"]["rounds"], 2, "{outcome}");
    }
}
