//! The fault-injection suite: real processes and a private RabbitMQ + Redis per test, killed,
//! restarted and paused while tasks run; the oracle then checks that nothing was lost, counted
//! twice, stuck or wrong. docs/reliability.md lists what each scenario proves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    fault::{
        check, collect_replies, collect_stored, note, settled, wait_for_progress, Cluster, Planned,
        Report,
    },
    wait_for_running, RawClient, TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

fn tasks(prefix: &str, count: usize, parts: u32, delay_ms: u64) -> Vec<Planned> {
    (0..count)
        .map(|i| {
            let i64_i = i as i64;
            Planned {
                id: format!("{prefix}-{i}"),
                start: -1000 * i64_i,
                end: 100_000 + 7919 * i64_i,
                parts,
                // Every third task has a poisoned subtask, so `partial` outcomes are checked too.
                poison: if i % 3 == 2 { vec![1] } else { vec![] },
                delay_ms,
                shape: Value::Null,
                options: Value::Null,
            }
        })
        .collect()
}

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

async fn submit(client: &RawClient, tasks: &[Planned], reply_to: &str) {
    submit_as(client, tasks, reply_to, None).await;
}

/// Submits with a given correlation id (else the outcome carries the task id).
async fn submit_as(
    client: &RawClient,
    tasks: &[Planned],
    reply_to: &str,
    correlation_id: Option<&str>,
) {
    for task in tasks {
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to));
        if let Some(correlation_id) = correlation_id {
            properties = properties.with_correlation_id(ShortString::from(correlation_id));
        }
        client
            .publish("chorus.tasks", &msgpack(&task.request()), properties)
            .await;
    }
}

/// Waits until every service has declared its queues, and a little more: RabbitMQ 3.10 may not
/// restart a quorum queue killed within a fraction of a second of its creation (its Ra server
/// stays leaderless), which is a broker limitation, not what these scenarios test.
async fn wait_for_topology(client: &RawClient) {
    for queue in [
        "chorus.tasks",
        "chorus.subtasks",
        "chorus.results",
        "chorus.dead",
    ] {
        client.wait_for_queue(queue).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Waits until the task hash `key` is in `state`.
async fn wait_for_state(env: &TestEnv, key: &str, state: &str) {
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let current: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("state")
            .query_async(&mut redis)
            .await
            .unwrap();
        if current.as_deref() == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached state {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_clean(scenario: &str, report: &Report) {
    note(&format!("[{scenario}] {report}"));
    assert!(report.is_clean(), "[{scenario}] {report}");
}

/// Plays supervisor until the first reply: restarts `process` (started as `program`) each time
/// it dies, at most ten times. Returns the decoded reply and how many times it died.
async fn supervise_until_reply(
    env: &mut TestEnv,
    replies: &mut lapin::Consumer,
    mut process: usize,
    program: (&str, &[&str], &[(&str, &str)]),
) -> (Value, usize) {
    let (bin, args, vars) = program;
    let mut crashes = 0;
    loop {
        if let Ok(Some(Ok(reply))) = tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(replies),
        )
        .await
        {
            return (chorus_tests::msgpack_to_json(&reply.data), crashes);
        }
        if !env.is_running(process) {
            crashes += 1;
            assert!(crashes <= 10, "{bin} kept crashing: never given up on");
            process = env.spawn_with(bin, args, vars);
        }
    }
}

async fn start(cluster: &Cluster, name: &str) -> (TestEnv, RawClient) {
    let env = cluster.env(name).await;
    let client = env.client().await;
    (env, client)
}

fn worker_args() -> [&'static str; 6] {
    [
        "--concurrency",
        "8",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
    ]
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

async fn broker_restart(name: &str, kill: bool) {
    let cluster = Cluster::start(name);
    cluster.prepare_for_broker_restarts().await;
    let (mut env, client) = start(&cluster, name).await;
    let services = [
        env.spawn("chorus-orchestrator", &["--publish-timeout-ms", "5000"]),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &["--publish-timeout-ms", "5000"]),
    ];
    wait_for_topology(&client).await;
    let run = tasks(name, 8, 30, 200);
    submit(&client, &run, "nobody-listens").await;
    wait_for_progress(&env, &run, 30).await;
    drop(client);
    if kill {
        cluster.kill_rabbitmq();
    } else {
        cluster.stop_rabbitmq();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_missing();
    let outcomes = collect_stored(&env, &run, DEADLINE).await;
    let report = check(&env, &run, &outcomes, 0).await;
    assert_clean(
        &format!(
            "RabbitMQ {}",
            if kill { "SIGKILL" } else { "graceful restart" }
        ),
        &report,
    );
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of reconnecting"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s04_services_ride_through_a_graceful_broker_restart() {
    broker_restart("s04a", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s04_services_ride_through_a_killed_broker() {
    broker_restart("s04b", true).await;
}

#[derive(Clone, Copy, Debug)]
enum RedisFault {
    Restart,
    Kill,
    Pause,
}

async fn redis_fault(name: &str, fault: RedisFault) {
    let cluster = Cluster::start(name);
    let (mut env, client) = start(&cluster, name).await;
    let timeouts = ["--redis-timeout-ms", "1000"];
    let services = [
        env.spawn("chorus-orchestrator", &timeouts),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &timeouts),
    ];
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks(name, 8, 30, 30);
    submit(&client, &run, &reply_to).await;
    wait_for_progress(&env, &run, 30).await;
    match fault {
        RedisFault::Restart => cluster.stop_redis(),
        RedisFault::Kill => cluster.kill_redis(),
        RedisFault::Pause => cluster.pause_redis(),
    }
    // Longer than the command timeout, so commands fail instead of waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match fault {
        RedisFault::Pause => cluster.resume_redis(),
        RedisFault::Restart | RedisFault::Kill => cluster.start_missing(),
    }
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean(&format!("Redis {fault:?}"), &report);
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of riding out the Redis fault"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s06_redis_restarted_gracefully() {
    redis_fault("s06a", RedisFault::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s06_redis_killed_with_appendonly() {
    redis_fault("s06b", RedisFault::Kill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s06_redis_paused_longer_than_the_command_timeout() {
    redis_fault("s06c", RedisFault::Pause).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s07_duplicate_tasks_subtasks_and_results_change_nothing() {
    let cluster = Cluster::start("s07");
    let (mut env, client) = start(&cluster, "s07").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s07", 1, 10, 300);
    let task = &run[0];
    for correlation_id in ["first", "second", "third"] {
        submit_as(&client, &run, &reply_to, Some(correlation_id)).await;
    }
    // The copies must find the task planned, or they are (rightly) dead-lettered as strays.
    wait_for_state(&env, "chorus:{s07-0}:task", "running").await;
    let properties =
        BasicProperties::default().with_content_type(ShortString::from("application/msgpack"));
    for index in [2_u32, 5] {
        let (start, end) =
            chorus_shared::kinds::range_sum::slice_bounds(task.start, task.end, task.parts, index);
        let slice = json!({"index": index, "start": start, "end": end, "delay_ms": 0, "fail_attempts": 0, "poison": false});
        let subtask = json!({
            "task": task.id, "subtask": index.to_string(), "kind": "range-sum", "attempt": 1,
            "max_attempts": 2, "timeout_ms": 10_000, "payload": serde_bytes::ByteBuf::from(msgpack(&slice)),
        });
        let sum = i64::try_from(chorus_shared::kinds::range_sum::sum_of_range(start, end)).unwrap();
        let output = serde_bytes::ByteBuf::from(msgpack(&json!({"sum": sum})));
        let result = json!({"task": task.id, "subtask": index.to_string(), "attempts": 1, "outcome": {"succeeded": output}});
        for _ in 0..2 {
            client
                .publish(
                    "chorus.subtasks",
                    &rmp_serde::to_vec_named(&subtask).unwrap(),
                    properties.clone(),
                )
                .await;
            client
                .publish(
                    "chorus.results",
                    &rmp_serde::to_vec_named(&result).unwrap(),
                    properties.clone(),
                )
                .await;
        }
    }
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("duplicates of tasks, subtasks and results", &report);
    assert!(report.duplicate_executions >= 4, "{report}");
    assert_eq!(
        collected.counts.get(&task.id),
        Some(&3),
        "each of the three submissions gets the one outcome"
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn s05_a_memory_alarm_blocks_publishers_without_losing_anything() {
    let cluster = Cluster::start("s05");
    let (mut env, client) = start(&cluster, "s05").await;
    let services = [
        env.spawn("chorus-orchestrator", &[]),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &[]),
    ];
    wait_for_topology(&client).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s05", 6, 30, 100);
    submit(&client, &run, &reply_to).await;
    wait_for_progress(&env, &run, 20).await;
    cluster.rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
    let mut redis = env.redis().await;
    let settled_at_alarm = settled(&mut redis, &run).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled_during_alarm = settled(&mut redis, &run).await;
    cluster.rabbitmqctl(&["set_vm_memory_high_watermark", "0.6"]);
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("memory alarm", &report);
    note(&format!(
        "[memory alarm] subtasks settled when the alarm went off: {settled_at_alarm}, four seconds into it: {settled_during_alarm}"
    ));
    for service in services {
        assert!(env.is_running(service), "a service exited during the alarm");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s09_hostile_input_on_every_queue_is_dead_lettered_with_bounded_memory() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let cluster = Cluster::start("s09");
    let (mut env, client) = start(&cluster, "s09").await;
    let services = [
        env.spawn("chorus-orchestrator", &[]),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &[]),
    ];
    wait_for_topology(&client).await;
    // As large as a header frame may be (the broker's frame_max is 128 KiB).
    let mut huge_headers = FieldTable::default();
    for i in 0..1100 {
        huge_headers.insert(
            ShortString::from(format!("h{i}")),
            AMQPValue::LongString(LongString::from(vec![b'x'; 100])),
        );
    }
    let plain = BasicProperties::default();
    let bodies: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("garbage", b"\xc1\xc1\xc1".to_vec(), plain.clone()),
        (
            "wrong schema",
            msgpack(&json!({"hello": "world"})),
            plain.clone(),
        ),
        (
            "missing ids",
            msgpack(&json!({"kind": "range-sum"})),
            plain.clone(),
        ),
        ("10 MiB", vec![0x90; 10 * 1024 * 1024], plain.clone()),
        (
            "huge header table",
            b"\xc1".to_vec(),
            plain.clone().with_headers(huge_headers),
        ),
        (
            "stray id",
            msgpack(
                &json!({"task": "nobody", "subtask": "0", "attempts": 1, "outcome": {"failed": "x"}}),
            ),
            plain.clone(),
        ),
    ];
    let queues = ["chorus.tasks", "chorus.subtasks", "chorus.results"];
    for queue in queues {
        for (_, body, properties) in &bodies {
            client.publish(queue, body, properties.clone()).await;
        }
    }
    let dead = client
        .drain("chorus.dead", queues.len() * bodies.len())
        .await;
    assert_eq!(
        dead.len(),
        queues.len() * bodies.len(),
        "everything is accounted for in chorus.dead"
    );
    for message in &dead {
        let reason = chorus_tests::header(&message.delivery.properties, "x-chorus-reason");
        assert!(
            reason.is_some_and(|r| !r.is_empty()),
            "every dead letter carries a reason"
        );
    }
    // Still serving, and small.
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s09", 2, 10, 0);
    submit(&client, &run, &reply_to).await;
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    assert_clean(
        "after hostile input",
        &check(&env, &run, &collected.outcomes, collected.conflicting).await,
    );
    for service in services {
        assert!(env.is_running(service), "a service died of hostile input");
        let rss = env.rss_kib(service);
        note(&format!(
            "[hostile input] service #{service} RSS {rss} KiB after {} hostile messages",
            dead.len()
        ));
        assert!(
            rss < 200 * 1024,
            "service {service} holds {rss} KiB after hostile input"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s08_poison_that_panics_or_crashes_its_worker_ends_in_chorus_dead_and_innocents_do_not() {
    let cluster = Cluster::start("s08");
    let (mut env, client) = start(&cluster, "s08").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let crash_failpoint = [("CHORUS_FAILPOINTS", "range-sum.crash=abort")];
    let crashing_worker = [
        "--concurrency",
        "4",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "100",
    ];
    let worker = env.spawn_with("chorus-worker", &crashing_worker, &crash_failpoint);
    wait_for_topology(&client).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let request = json!({
        "kind": "range-sum", "id": "s08",
        "input": {"start": 0, "end": 1200, "parts": 12, "panic": [2], "crash": [7], "delay_ms": 100},
        "options": {"max_attempts": 3, "on_failure": "continue"},
    });
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_reply_to(ShortString::from(reply_to.as_str()));
    client
        .publish("chorus.tasks", &msgpack(&request), properties)
        .await;

    // Play supervisor: restart the worker each time the poison takes it down.
    let (outcome, crashes) = supervise_until_reply(
        &mut env,
        &mut replies,
        worker,
        ("chorus-worker", &crashing_worker, &crash_failpoint),
    )
    .await;
    note(&format!(
        "[poison] worker crashes before the crashing subtask was given up: {crashes}"
    ));
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 10);
    assert_eq!(outcome["stats"]["failed"], 2);
    let failed: Vec<&str> = outcome["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subtask"].as_str())
        .collect();
    assert_eq!(failed, ["2", "7"], "only the culprits fail");
    let (a, b) = chorus_shared::kinds::range_sum::slice_bounds(0, 1200, 12, 2);
    let (c, d) = chorus_shared::kinds::range_sum::slice_bounds(0, 1200, 12, 7);
    let expected = (0..1200).sum::<i64>() - (a..b).sum::<i64>() - (c..d).sum::<i64>();
    assert_eq!(outcome["output"]["sum"], expected);
    assert!(
        crashes >= 4,
        "the crashing subtask ran until the limit: {crashes} crashes"
    );
    let dead = client.drain("chorus.dead", 2).await;
    let mut culprits: Vec<String> = dead
        .iter()
        .map(|m| chorus_tests::header(&m.delivery.properties, "x-chorus-subtask").unwrap())
        .collect();
    culprits.sort();
    // A worker killed between confirming a dead letter and acking its delivery dead-letters
    // that subtask again when the delivery comes back (at least once, as every publish + ack):
    // a culprit may appear twice, an innocent never.
    culprits.dedup();
    assert_eq!(
        culprits,
        ["2", "7"],
        "innocent co-delivered subtasks are not dead-lettered"
    );
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| chorus_tests::header(&m.delivery.properties, "x-chorus-reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("panicked")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("without finishing")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s10_a_channel_closed_for_consumer_timeout_loses_and_double_counts_nothing() {
    let cluster = Cluster::start("s10");
    // A one-second consumer_timeout, checked every 100 ms (RabbitMQ checks once a minute by
    // default, which is why the real setting must exceed the longest subtask by a margin).
    cluster.rabbitmqctl(&[
        "eval",
        "application:set_env(rabbit, channel_tick_interval, 100), application:set_env(rabbit, consumer_timeout, 1000).",
    ]);
    let (mut env, client) = start(&cluster, "s10").await;
    env.spawn("chorus-orchestrator", &[]);
    let worker = env.spawn("chorus-worker", &["--concurrency", "3"]);
    env.spawn("chorus-synthesizer", &[]);
    wait_for_topology(&client).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    // Every attempt takes 1.5 s, past the timeout: the broker closes the worker's channel
    // under every one of them.
    let run = tasks("s10", 1, 3, 1500);
    submit(&client, &run, &reply_to).await;
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    // The broker did close the worker's channel under the running subtasks.
    let log = env.log_of(worker);
    assert!(
        log.contains("delivery acknowledgement on channel"),
        "no consumer_timeout channel close in the worker's log"
    );
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("consumer_timeout closes the worker's channel", &report);
    assert!(
        env.is_running(worker),
        "the worker reconnects instead of exiting"
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn s19_retries_waiting_out_their_delay_survive_a_killed_broker() {
    let cluster = Cluster::start("s19");
    cluster.prepare_for_broker_restarts().await;
    let (mut env, client) = start(&cluster, "s19").await;
    let services = [
        env.spawn("chorus-orchestrator", &["--publish-timeout-ms", "5000"]),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &["--publish-timeout-ms", "5000"]),
    ];
    wait_for_topology(&client).await;
    // Every subtask fails its first three attempts, so retries stream through the delay queues
    // (20 to 200 ms each) the whole time; each SIGKILL catches dozens of them mid-move.
    let run: Vec<Planned> = tasks("s19", 6, 40, 10)
        .into_iter()
        .map(|task| Planned {
            shape: json!({"fail_attempts": 3}),
            options: json!({"max_attempts": 4}),
            ..task
        })
        .collect();
    submit(&client, &run, "nobody-listens").await;
    drop(client);
    for settled_before_kill in [10, 90] {
        wait_for_progress(&env, &run, settled_before_kill).await;
        cluster.kill_rabbitmq();
        cluster.start_missing();
    }
    let outcomes = collect_stored(&env, &run, DEADLINE).await;
    let report = check(&env, &run, &outcomes, 0).await;
    assert_clean(
        "RabbitMQ SIGKILL while retries wait out their delay",
        &report,
    );
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of reconnecting"
        );
    }
}

/// Live children of process `pid` (every thread's `/proc/<pid>/task/<tid>/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(Result::ok)
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, ...), `None` once there is no such
/// process.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A kinds file with kind `slow-pool`: no planner (a subtask per item of `input.items`), a
/// pool of 4 `slow_pool.py` processes (`delay_ms` per call, each call logged to `log`) as
/// handler, no synthesis (the outputs as a list).
fn slow_pool_kinds_file(dir: &std::path::Path, log: &std::path::Path, delay_ms: u64) -> String {
    let script = chorus_tests::repo_dir().join("tests/fixtures/kinds/slow_pool.py");
    let text = format!(
        "[kinds.slow-pool]\nhandlers.default = {{ type = \"command\", mode = \"pool\", pool_size = 4, \
         program = \"python3\", args = [{:?}, {:?}, \"{delay_ms}\"] }}\n",
        script.display().to_string(),
        log.display().to_string(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn s20_a_worker_killed_with_its_pool_processes_mid_task_loses_and_double_counts_nothing() {
    let cluster = Cluster::start("s20");
    let (mut env, client) = start(&cluster, "s20").await;
    let dir = cluster.state_dir.join("kinds");
    let log = dir.join("calls.log");
    let file = slow_pool_kinds_file(&dir, &log, 200);
    let mut worker = vec!["--kinds-file", &file, "--concurrency", "4"];
    worker.extend_from_slice(&worker_args()[2..]);
    env.spawn("chorus-orchestrator", &["--kinds-file", &file]);
    let victim = env.spawn("chorus-worker", &worker);
    let survivor = env.spawn("chorus-worker", &worker);
    env.spawn("chorus-synthesizer", &["--kinds-file", &file]);
    client.wait_for_consumers("chorus.subtasks", 2).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let (tasks, items) = (3, 24_u64);
    for task in 0..tasks {
        let request = json!({"kind": "slow-pool", "id": format!("s20-{task}"),
                             "input": {"items": (0..items).map(|i| i + 100 * task).collect::<Vec<_>>()}});
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to.as_str()));
        client
            .publish("chorus.tasks", &msgpack(&request), properties)
            .await;
    }
    // SIGKILL the victim while its whole pool is busy and some calls have finished.
    let victim_pid = env.pid(victim);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let pool = loop {
        let pool = children_of(victim_pid);
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        if pool.len() == 4 && calls >= 12 {
            break pool;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim's pool never filled: {pool:?}, {calls} calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    env.kill(victim);
    let restarted = env.spawn("chorus-worker", &worker);
    let collected = collect_replies(&mut replies, tasks as usize, DEADLINE).await;
    assert_eq!(collected.conflicting, 0);
    assert!(
        collected.counts.values().all(|&n| n == 1),
        "{:?}",
        collected.counts
    );
    for task in 0..tasks {
        let outcome = &collected.outcomes[&format!("s20-{task}")];
        let expected: Vec<u64> = (0..items).map(|i| 2 * (i + 100 * task)).collect();
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        assert_eq!(outcome["output"], json!(expected), "{outcome}");
        let stats = &outcome["stats"];
        assert_eq!(
            (&stats["subtasks"], &stats["succeeded"], &stats["failed"]),
            (&json!(items), &json!(items), &json!(0)),
            "{outcome}"
        );
    }
    // The victim's pool processes got the parent-death signal: none runs any more. (They wait
    // as zombies for whatever reaps orphans on this machine; their worker cannot reap them.)
    for _ in 0..250 {
        if pool
            .iter()
            .all(|&pid| matches!(proc_state(pid), None | Some('Z' | 'X')))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states: Vec<_> = pool.iter().map(|&pid| (pid, proc_state(pid))).collect();
    assert!(
        states
            .iter()
            .all(|(_, s)| matches!(s, None | Some('Z' | 'X'))),
        "the killed worker's pool outlived it: {states:?}"
    );
    // The live workers reap what they start: no zombie among their children.
    for index in [survivor, restarted] {
        let zombies: Vec<u32> = children_of(env.pid(index))
            .into_iter()
            .filter(|&pid| proc_state(pid) == Some('Z'))
            .collect();
        assert!(
            zombies.is_empty(),
            "zombie children of a live worker: {zombies:?}"
        );
    }
    // Every subtask ran, and only those the kill interrupted ran twice.
    let calls = std::fs::read_to_string(&log).unwrap();
    let mut runs: std::collections::HashMap<(String, String), Vec<u32>> = Default::default();
    for line in calls.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        runs.entry((fields[0].to_owned(), fields[1].to_owned()))
            .or_default()
            .push(fields[3].parse().unwrap());
    }
    assert_eq!(runs.len(), tasks as usize * items as usize, "{calls}");
    let redone: Vec<_> = runs.iter().filter(|(_, pids)| pids.len() > 1).collect();
    assert!(!redone.is_empty(), "the kill interrupted no call");
    for (subtask, pids) in &redone {
        assert!(
            pool.contains(&pids[0]),
            "{subtask:?} ran twice though its first run was not on the killed worker: {pids:?}"
        );
    }
    note(&format!(
        "[pool worker SIGKILL] {} calls for {} subtasks, {} redone after the kill",
        calls.lines().count(),
        runs.len(),
        redone.len()
    ));
}
