//! The Redis Cluster fault scenarios: tasks run on the test cluster (`deploy/redis-cluster.sh`,
//! 3 masters and 3 replicas) while (RC1) the master that holds a task's slot is killed
//! (SIGKILL) mid-run and its replica takes over, or (RC2) the slots of running tasks, of the
//! index of recent tasks and of a rate-limit bucket are resharded to another master live, so
//! that the services meet `MOVED`, `ASK` and `TRYAGAIN`; the oracle of `chorus_tests::fault`
//! checks that nothing was lost, counted twice or stuck. Needs the cluster
//! (`CHORUS_TEST_REDIS_CLUSTER_PORT`), so it is ignored in the plain run and `deploy/test.sh`
//! runs it in its cluster step.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chorus_shared::store::{KeptCancel, Store};
use chorus_tests::{
    fault::{check, collect_replies, note, wait_for_progress, Planned},
    redis_cluster, TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::Value;

/// Longest wait for the outcomes after the kill.
const DEADLINE: Duration = Duration::from_secs(120);

fn run_script(first: u16, args: &[&str]) -> String {
    redis_cluster::run(redis_cluster::script(first, args))
}

fn tasks(count: usize, delay_ms: u64) -> Vec<Planned> {
    (0..count)
        .map(|i| Planned {
            id: format!("rcf-{i}"),
            start: -1000 * i as i64,
            end: 100_000 + 7919 * i as i64,
            parts: 30,
            // Every third task has a poisoned subtask, so `partial` outcomes are checked too.
            poison: if i % 3 == 2 { vec![1] } else { vec![] },
            delay_ms,
            shape: Value::Null,
            options: Value::Null,
        })
        .collect()
}

/// Waits (bounded) until a master other than `killed` serves `key`'s slot; how long it took.
fn wait_for_failover(first: u16, key: &str, killed: &str) -> Duration {
    let started = Instant::now();
    loop {
        let owner = redis_cluster::script(first, &["owner", key])
            .output()
            .unwrap();
        let owner = String::from_utf8_lossy(&owner.stdout).trim().to_owned();
        if !owner.is_empty() && owner != killed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no replica took over the slot of {key} from the master on {killed} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn rc1_a_master_killed_mid_run_fails_over_to_its_replica_and_loses_nothing() {
    let first = redis_cluster::port()
        .expect("CHORUS_TEST_REDIS_CLUSTER_PORT: the first port of deploy/redis-cluster.sh");
    let mut env = TestEnv::new("rc1").await;
    let timeouts = ["--redis-timeout-ms", "1000"];
    let worker = [
        "--concurrency",
        "8",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        "--redis-timeout-ms",
        "1000",
    ];
    let services = [
        env.spawn("chorus-orchestrator", &timeouts),
        env.spawn("chorus-worker", &worker),
        env.spawn("chorus-synthesizer", &timeouts),
    ];
    let run = tasks(9, 30);
    let mut replies = submit(&env, &run).await;
    wait_for_progress(&env, &run, 40).await;

    // The master of the first task's slot: its keys, and whatever else lives there, move.
    let key = format!("chorus:{{{}}}:task", run[0].id);
    let master = run_script(first, &["owner", &key]);
    let replica = run_script(first, &["replica-of", &master]);
    run_script(first, &["kill", &master]);
    let failover = wait_for_failover(first, &key, &master);

    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    let line = format!(
        "[Redis Cluster master killed] master {master} → replica {replica} in {:.1} s; {report}",
        failover.as_secs_f64()
    );
    note(&line);
    assert!(report.is_clean(), "{line}");
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of riding out the failover"
        );
    }
    // Back to six nodes for whatever runs next on the cluster.
    run_script(first, &["restart", &master]);
}

/// The `MOVED`, `ASK` and `TRYAGAIN` replies the cluster's nodes have sent so far
/// (`deploy/redis-cluster.sh redirections`), in that order.
fn redirections(first: u16) -> [u64; 3] {
    redis_cluster::redirections(redis_cluster::script(first, &["redirections"]))
}

/// Submits `run` with replies to a fresh queue; the consumer of the replies.
async fn submit(env: &TestEnv, run: &[Planned]) -> lapin::Consumer {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, replies) = client.reply_queue().await;
    for task in run {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to.as_str()));
        let body = rmp_serde::to_vec_named(&task.request()).unwrap();
        client.publish("chorus.tasks", &body, properties).await;
    }
    replies
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn rc2_slots_resharded_mid_run_are_followed_and_lose_nothing() {
    let first = redis_cluster::port()
        .expect("CHORUS_TEST_REDIS_CLUSTER_PORT: the first port of deploy/redis-cluster.sh");
    let mut env = TestEnv::new("rc2").await;
    // Long enough subtasks (four at a time) that every move below happens mid-run.
    let form = Form::new();
    let timeouts = ["--redis-timeout-ms", form.timeout_ms];
    let worker = [
        "--redis-timeout-ms",
        form.timeout_ms,
        "--concurrency",
        "4",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        // A bucket, so that take_token.lua runs on a slot that moves too.
        "--rate-limit",
        "default=1000",
    ];
    let services = [
        env.spawn("chorus-orchestrator", &timeouts),
        env.spawn("chorus-worker", &worker),
        env.spawn("chorus-synthesizer", &timeouts),
    ];
    let run = tasks(6, form.delay_ms);
    let mut replies = submit(&env, &run).await;
    wait_for_progress(&env, &run, 10).await;
    let before = redirections(first);

    // Three running tasks' slots, the index of recent tasks (written at each claim and
    // outcome) and the worker type's bucket (every subtask) each move to the next master, one
    // key at a time, so that commands meet the slot half migrated.
    let mut keys: Vec<String> = run[..3]
        .iter()
        .map(|task| format!("chorus:{{{}}}:task", task.id))
        .collect();
    keys.push("chorus:index:{tasks}".to_owned());
    keys.push("chorus:rate:{default}".to_owned());
    let started = Instant::now();
    let mut moves = Vec::new();
    for key in &keys {
        let moved = run_script(first, &["move-slot", key, "", form.pause_ms]);
        if !moves.contains(&moved) {
            moves.push(moved);
        }
    }
    let resharding = started.elapsed();
    let settled_during = chorus_tests::fault::settled(&mut env.redis().await, &run).await;
    let planned: u64 = run.iter().map(|task| u64::from(task.parts)).sum();
    assert!(
        settled_during < planned,
        "the run had ended before the resharding did: nothing was tested"
    );

    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    let after = redirections(first);
    let [moved, ask, tryagain] = [0, 1, 2].map(|i| after[i] - before[i]);
    // Commands that failed after all (timed out, or still refused) and were retried by the
    // service with their message.
    let failed: usize = services
        .iter()
        .map(|service| env.log_of(*service).matches("Redis failed").count())
        .sum();
    let line = format!(
        "[Redis Cluster resharding, {} ms per key, timeout {} ms] {} slots moved in {:.1} s ({}); the nodes replied MOVED {moved}, ASK {ask}, TRYAGAIN {tryagain} times; commands failed and retried: {failed}; {report}",
        form.pause_ms,
        form.timeout_ms,
        keys.len(),
        resharding.as_secs_f64(),
        moves.join(", ")
    );
    note(&line);
    assert!(report.is_clean(), "{line}");
    assert!(
        moved > 0 && ask > 0,
        "the services never met a redirection: {line}"
    );
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of following the resharding: {line}"
        );
    }
    // A slot that migrates within the command timeout costs no failed command (its TRYAGAIN is
    // tried again in time); a longer one may, and its message is retried.
    assert!(
        !form.quick || failed == 0,
        "a command failed during a short resharding: {line}"
    );
}

/// The pace of RC2: in CI (`CHORUS_TEST_CLUSTER` unset or `ci`) each slot migrates in well under
/// the services' command timeout (the default, 5 s); with `CHORUS_TEST_CLUSTER=full`, a task's
/// slot (ten keys or so, 400 ms apart) for longer than a 2 s one.
struct Form {
    /// Whether each slot's migration is shorter than the command timeout.
    quick: bool,
    /// The services' `--redis-timeout-ms`.
    timeout_ms: &'static str,
    /// How long each subtask runs, ms.
    delay_ms: u64,
    /// The pause before each key moves (`move-slot`), ms.
    pause_ms: &'static str,
}

impl Form {
    fn new() -> Self {
        if std::env::var("CHORUS_TEST_CLUSTER").is_ok_and(|form| form == "full") {
            Self {
                quick: false,
                timeout_ms: "2000",
                delay_ms: 800,
                pause_ms: "400",
            }
        } else {
            Self {
                quick: true,
                timeout_ms: "5000",
                delay_ms: 150,
                pause_ms: "50",
            }
        }
    }
}

/// Waits (bounded) until the master on `port` has `slot` migrating (`CLUSTER NODES`: its own
/// line shows `[<slot>->-<target>]`).
async fn wait_for_migrating(port: u16, slot: i64) {
    let mut node = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let marker = format!("[{slot}->-");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut node)
            .await
            .unwrap();
        if nodes
            .lines()
            .any(|line| line.contains("myself") && line.contains(&marker))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {slot} never became migrating on {port} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `keep_cancel` (a script of three keys, only the task's existing) with a store whose
/// commands time out after `timeout`, while the task's slot migrates for 2 × `pause_ms`
/// (before and after its one key moves); asserts it met `TRYAGAIN` and was answered.
async fn keep_cancel_while_migrating(id: &str, timeout: Duration, pause_ms: &str) {
    let first = redis_cluster::port()
        .expect("CHORUS_TEST_REDIS_CLUSTER_PORT: the first port of deploy/redis-cluster.sh");
    let env = TestEnv::new(id).await;
    let mut redis = env.redis().await;
    // keep_cancel.lua takes the task, its outcome and its kept cancel: only the task exists, so
    // while the slot migrates the script has keys missing on both nodes.
    let key = format!("chorus:{{{id}}}:task");
    redis::cmd("HSET")
        .arg(&key)
        .arg("status")
        .arg("running")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let store = Store::connect(&redis_cluster::url(first), timeout)
        .await
        .unwrap();
    let source: u16 = run_script(first, &["owner", &key]).parse().unwrap();
    let before = redirections(first);
    let mover = {
        let (key, pause_ms) = (key.clone(), pause_ms.to_owned());
        std::thread::spawn(move || run_script(first, &["move-slot", &key, "", &pause_ms]))
    };
    wait_for_migrating(source, slot).await;
    let started = Instant::now();
    let kept = store.keep_cancel(id, None, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let moved = mover.join().unwrap();
    let tryagain = redirections(first)[2] - before[2];
    eprintln!("slot {slot} moved ({moved}); keep_cancel took {took:?} through {tryagain} TRYAGAIN");
    assert!(
        tryagain > 0,
        "the script never met TRYAGAIN: nothing was tested"
    );
    assert_eq!(
        kept.unwrap_or_else(|error| panic!("after {took:?} and {tryagain} TRYAGAIN: {error}")),
        KeptCancel::Claimed
    );
}

/// A script whose keys are half there while their slot migrates gets `TRYAGAIN` from the
/// importing node until the slot has moved: redis-rs tries it again within a 1 s command
/// timeout (`store::cluster`'s `RETRY_WAIT`; its own first wait is 1.28 s).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn a_script_meeting_tryagain_mid_migration_succeeds_within_its_timeout() {
    keep_cancel_while_migrating("tryagain", Duration::from_secs(1), "200").await;
}

/// A migration that outlasts redis-rs's tries (16, about 1.7 s of waits) but not the command's
/// timeout: the store tries the script again itself (`store::cluster::Clustered`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Redis Cluster: deploy/test.sh runs it in its cluster step"]
async fn a_script_meeting_tryagain_past_redis_rs_tries_succeeds_within_its_timeout() {
    keep_cancel_while_migrating("tryagain-long", Duration::from_secs(5), "1800").await;
}
