//! The health and metrics listener of the real services (issue 19): `/metrics` counted against
//! a known run, `/readyz` through a broker and a Redis outage, `/healthz`, the `--http-listen`
//! settings (off, a busy default, a busy or invalid explicit address), and quiet logs (a clean
//! shutdown logs no ERROR or WARN).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_shared::topology;
use chorus_tests::{
    fault::Cluster,
    msgpack_to_json, next_message,
    observe::{free_address, get, wait_for, Scrape},
    TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

const RETRY_FLAGS: [&str; 4] = ["--retry-base-delay-ms", "20", "--retry-max-delay-ms", "200"];

/// The three services, each with a listener on a free port: (orchestrator, worker, synthesizer)
/// addresses, in the env's child indices 0, 1, 2.
async fn start_observed(env: &mut TestEnv) -> [String; 3] {
    let addresses = [free_address(), free_address(), free_address()];
    env.spawn("chorus-orchestrator", &["--http-listen", &addresses[0]]);
    let mut worker = vec!["--concurrency", "3", "--http-listen", &addresses[1]];
    worker.extend(RETRY_FLAGS);
    env.spawn("chorus-worker", &worker);
    env.spawn("chorus-synthesizer", &["--http-listen", &addresses[2]]);
    for address in &addresses {
        assert_eq!(wait_for(address, "/readyz", 200).await, "ready\n");
        assert_eq!(
            get(address, "/healthz").await.unwrap(),
            (200, "ok\n".to_owned())
        );
    }
    addresses
}

/// Submits `request` and waits for its outcome.
async fn run_task(env: &TestEnv, request: &Value) -> Value {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(request).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_reply_to(ShortString::from(reply_to.as_str())),
        )
        .await;
    msgpack_to_json(&next_message(&mut replies).await.data)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_known_run_exactly() {
    let mut env = TestEnv::new("metrics").await;
    let [orchestrator, worker, synthesizer] = start_observed(&mut env).await;
    // 4 subtasks, each failing its first attempt: 8 started, 4 retried, 4 succeeded.
    let retried = json!({"kind": "range-sum", "id": "retried", "input": {"start": 0, "end": 40, "parts": 4, "fail_attempts": 1},
                         "options": {"max_attempts": 3}});
    assert_eq!(run_task(&env, &retried).await["status"], "succeeded");
    // 3 subtasks, one failing every attempt of 2: 4 started, 1 retried, 2 succeeded, 1 failed.
    let failing = json!({"kind": "range-sum", "id": "failing", "input": {"start": 0, "end": 30, "parts": 3, "poison": [0]},
                         "options": {"max_attempts": 2, "on_failure": "continue"}});
    assert_eq!(run_task(&env, &failing).await["status"], "partial");
    // A body that is no request at all: dead-lettered by the orchestrator as malformed.
    let client = env.client().await;
    client
        .publish(
            "chorus.tasks",
            b"\xc1 not msgpack",
            BasicProperties::default().with_content_type(ShortString::from("application/msgpack")),
        )
        .await;
    client.drain("chorus.dead", 2).await;

    let kind = ("kind", "range-sum");
    let default = ("worker_type", "default");
    let scrape = Scrape::of(&orchestrator).await;
    assert_eq!(
        scrape.value("chorus_tasks_submitted_total", &[kind]),
        2.0,
        "{scrape:?}"
    );
    assert_eq!(
        scrape.value(
            "chorus_dead_letters_total",
            &[("queue", "chorus.tasks"), ("reason", "malformed")]
        ),
        1.0,
        "{:?}",
        scrape.named("chorus_dead")
    );

    let scrape = Scrape::of(&worker).await;
    let count = |name: &str| scrape.value(name, &[kind, default]);
    let all = scrape.named("chorus_subtask");
    assert_eq!(count("chorus_subtasks_started_total"), 12.0, "{all:?}");
    assert_eq!(count("chorus_subtasks_retried_total"), 5.0, "{all:?}");
    assert_eq!(count("chorus_subtasks_succeeded_total"), 6.0, "{all:?}");
    assert_eq!(count("chorus_subtasks_failed_total"), 1.0, "{all:?}");
    assert_eq!(count("chorus_subtask_run_seconds_count"), 12.0, "{all:?}");
    // Publish to start is known for first attempts (their message says when it was published).
    assert_eq!(
        count("chorus_subtask_queue_wait_seconds_count"),
        7.0,
        "{all:?}"
    );
    let queue = topology::subtask_queue("default");
    assert_eq!(
        scrape.value(
            "chorus_dead_letters_total",
            &[("queue", &queue), ("reason", "failed")]
        ),
        1.0,
        "{:?}",
        scrape.named("chorus_dead")
    );
    let slots = |state| {
        scrape.value(
            "chorus_worker_slots",
            &[("worker_type", "default"), ("state", state)],
        )
    };
    assert_eq!((slots("total"), slots("busy")), (3.0, 0.0));

    // A delivery is counted once it is marked, just after the submitter got its reply.
    let mut scrape = Scrape::of(&synthesizer).await;
    for _ in 0..50 {
        if scrape.value("chorus_outcome_delivery_seconds_count", &[]) >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = Scrape::of(&synthesizer).await;
    }
    let finished =
        |status| scrape.value("chorus_tasks_finished_total", &[kind, ("status", status)]);
    assert_eq!(
        (finished("succeeded"), finished("partial")),
        (1.0, 1.0),
        "{scrape:?}"
    );
    assert_eq!(
        scrape.value("chorus_outcome_delivery_seconds_count", &[]),
        2.0
    );
    // No task or subtask id is ever a label.
    for address in [&orchestrator, &worker, &synthesizer] {
        let (_, text) = get(address, "/metrics").await.unwrap();
        assert!(
            !text.contains("retried\"") && !text.contains("failing\""),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_broker_and_redis() {
    let cluster = Cluster::start("metrics-readyz");
    let mut env = cluster.env("readyz").await;
    let address = free_address();
    let mut args = vec!["--http-listen", &address];
    args.extend(RETRY_FLAGS);
    env.spawn("chorus-worker", &args);
    wait_for(&address, "/readyz", 200).await;

    cluster.stop_rabbitmq();
    let reason = wait_for(&address, "/readyz", 503).await;
    assert!(reason.starts_with("rabbitmq: reconnecting"), "{reason}");
    assert_eq!(get(&address, "/healthz").await.unwrap().0, 200);
    cluster.start_missing();
    wait_for(&address, "/readyz", 200).await;
    let scrape = Scrape::of(&address).await;
    assert_eq!(
        scrape.value("chorus_reconnects_total", &[("server", "rabbitmq")]),
        1.0
    );

    cluster.stop_redis();
    let reason = wait_for(&address, "/readyz", 503).await;
    assert!(reason.starts_with("redis: "), "{reason}");
    cluster.start_missing();
    wait_for(&address, "/readyz", 200).await;
    let scrape = Scrape::of(&address).await;
    assert!(
        scrape.value("chorus_reconnects_total", &[("server", "redis")]) >= 1.0,
        "{scrape:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_listen_off_busy_and_invalid() {
    let mut env = TestEnv::new("listen").await;
    // Off: the service serves its queue without a listener (even with the variable set).
    let unused = free_address();
    let off = env.spawn_with(
        "chorus-worker",
        &["--http-listen", "off"],
        &[("CHORUS_HTTP_LISTEN", &unused)],
    );
    // A busy default port (held here, or by another service on this host): a warning, and
    // the service runs on without the listener.
    let _held = std::net::TcpListener::bind(chorus_shared::observe::SYNTHESIZER_LISTEN);
    let busy_default = env.spawn("chorus-synthesizer", &[]);
    // A busy explicit address stops the service at start-up, exit 64, naming the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let held = std::net::TcpListener::bind(&taken);
    let busy = env.spawn("chorus-orchestrator", &["--http-listen", &taken]);
    assert_eq!(env.wait_exit(busy, Duration::from_secs(30)), Some(64));
    assert!(
        env.log_of(busy).contains(&format!("--http-listen {taken}")),
        "{}",
        env.log_of(busy)
    );
    drop(held);
    // An address that is no address: exit 64 before anything starts.
    let output = env
        .run_to_exit("chorus-worker", &["--http-listen", "localhost"])
        .await;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--http-listen"));

    let client = env.client().await;
    client
        .wait_for_consumers(&topology::subtask_queue("default"), 1)
        .await;
    client.wait_for_consumers(topology::RESULTS_QUEUE, 1).await;
    assert!(env.is_running(off) && env.is_running(busy_default));
    assert!(
        env.log_of(off).contains("--http-listen off"),
        "{}",
        env.log_of(off)
    );
    assert!(!env.log_of(off).contains("serving /healthz"));
    assert!(get(&unused, "/healthz").await.is_none());
    let log = env.log_of(busy_default);
    assert!(
        log.contains("default --http-listen address unavailable"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_logs_no_error_or_warning() {
    let mut env = TestEnv::new("quiet-stop").await;
    start_observed(&mut env).await;
    let task =
        json!({"kind": "range-sum", "id": "quiet", "input": {"start": 0, "end": 10, "parts": 2}});
    assert_eq!(run_task(&env, &task).await["status"], "succeeded");
    for index in 0..3 {
        assert_eq!(env.terminate(index, Duration::from_secs(30)), Some(0));
        let log = env.log_of(index);
        let noisy: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(" ERROR ") || line.contains(" WARN "))
            .collect();
        assert!(
            noisy.is_empty(),
            "service {index} logged on a clean stop: {noisy:#?}"
        );
    }
}
