//! Several AMQP URLs (a RabbitMQ cluster's nodes) against the test broker: a node that is down
//! or does not answer is skipped within the connect timeout, and the services run on the next;
//! and a consumer the broker cancels (`basic.cancel`, as when its queue goes away or moves)
//! gets its session rebuilt. And the AMQP client's I/O runs on each service's own runtime, not
//! on a thread of its own (the patched lapin of `vendor/lapin`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chorus_shared::{amqp, tls::Endpoint};
use chorus_tests::{TestEnv, WAIT};

/// A local port where nothing listens: connecting to it is refused at once.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs a 4-subtask `range-sum` task through the services with `chorus submit --wait` and
/// checks its sum; `what` names the run in a failure.
async fn sums_a_range(env: &TestEnv, what: &str) {
    let (code, out) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--input",
            r#"{"start":0,"end":100,"parts":4}"#,
            "--wait",
        ])
        .await;
    assert_eq!(code, 0, "{what}: {out}");
    assert!(out.contains("4950"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_answers_costs_one_connect_timeout() {
    let env = TestEnv::new("nodes-silent").await;
    // Accepts TCP (the kernel completes the handshake) and never says a word of AMQP: a
    // hung node, which only the connect timeout gets past.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    let refused_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", refused_port());
    let nodes = [
        Endpoint::new(silent_url),
        Endpoint::new(refused_url),
        Endpoint::new(env.amqp_url.clone()),
    ];
    let started = Instant::now();
    let connected = tokio::time::timeout(
        WAIT,
        amqp::connect_any(&nodes, 0, "test", Duration::from_millis(500)),
    )
    .await
    .expect("connect_any did not give up on the silent node")
    .unwrap();
    assert_eq!(connected.node, 2, "connected to the live node");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to get past a silent node with a 500 ms timeout",
        started.elapsed()
    );
    // Starting at the live node connects to it first.
    let direct = amqp::connect_any(&nodes, 2, "test", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(direct.node, 2);
    // None answering: the last node's error, in time.
    let none = tokio::time::timeout(
        WAIT,
        amqp::connect_any(&nodes[..2], 0, "test", Duration::from_millis(500)),
    )
    .await
    .expect("connect_any did not give up");
    assert!(none.is_err(), "no node is live");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn services_given_a_dead_node_first_run_tasks_on_the_next() {
    let mut env = TestEnv::new("nodes-dead").await;
    let dead = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}",
        refused_port(),
        env.vhost
    );
    env.amqp_url = format!("{dead}, {}", env.amqp_url);
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &[]);
    env.spawn("chorus-synthesizer", &[]);
    sums_a_range(&env, "chorus submit --wait over the node list").await;
    let log = env.log_of(orchestrator);
    assert!(
        log.contains("cannot connect to this RabbitMQ node; trying the next")
            && log.contains("connected to RabbitMQ")
            && log.contains("node=2"),
        "the orchestrator's log names the skipped and the chosen node:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_the_broker_cancels_is_started_again() {
    let mut env = TestEnv::new("nodes-cancel").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &[]);
    let synthesizer = env.spawn("chorus-synthesizer", &[]);
    let client = env.client().await;
    client.wait_for_consumers("chorus.results", 1).await;
    // Deleting the queue makes the broker send basic.cancel to its consumer.
    let connection =
        lapin::Connection::connect(&env.amqp_url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            lapin::types::ShortString::from("chorus.results"),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while env
        .log_of(synthesizer)
        .matches("connected to RabbitMQ")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the synthesizer did not reconnect after its consumer was cancelled:\n{}",
            env.log_of(synthesizer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.wait_for_consumers("chorus.results", 1).await;
    sums_a_range(&env, "a task after the cancel").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amqp_io_runs_on_each_services_own_runtime() {
    let mut env = TestEnv::new("nodes-io").await;
    let services = [
        env.spawn("chorus-orchestrator", &[]),
        env.spawn("chorus-worker", &[]),
        env.spawn("chorus-synthesizer", &[]),
    ];
    sums_a_range(&env, "chorus submit --wait").await;
    // Released lapin reads and writes each connection on a thread named `lapin-io-loop`
    // (two per service: consume and publish), which cost every delivery two thread wake-ups;
    // with the patch (vendor/lapin/CHORUS-PATCH.md) that loop is a task on the runtime.
    for service in services {
        let names = env.thread_names(service);
        assert!(
            names
                .iter()
                .any(|name| name.starts_with("tokio-rt-worker") || name.starts_with("chorus")),
            "service {service}'s threads are not what this test expects: {names:?}"
        );
        assert!(
            !names.iter().any(|name| name == "lapin-io-loop"),
            "service {service} runs lapin's I/O on threads of its own: {names:?}"
        );
    }
}
