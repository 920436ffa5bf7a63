//! The RabbitMQ cluster scenarios: the services on different nodes of a real 3-node cluster
//! (stand-ins for different hosts); one node SIGKILLed under load (c01), or one reached through
//! a relay that freezes, as a host that vanishes without closing its sockets (c02). The oracle
//! then checks that nothing was lost, counted twice or stuck, and the services that were on that
//! node must have moved to another in time. docs/reliability.md lists the figures.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chorus_tests::{
    fault::{
        check, collect_stored, note, settled, submit, tasks, wait_for_progress, wait_for_topology,
        worker_args, Planned,
    },
    rabbit_cluster::{RabbitCluster, Relay, NODES},
    TestEnv,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
/// Longest time a service on the killed node may take to be consuming on another one.
const MOVE_LIMIT: Duration = Duration::from_secs(15);
/// The node the scenarios take away.
const VICTIM: u16 = 2;
/// The AMQP heartbeat (`--amqp-heartbeat-s`) of the services behind the frozen relay, seconds.
const HEARTBEAT_S: u16 = 2;
/// Subtasks settled before the fault is injected: the run is under way.
const SETTLED_BEFORE_FAULT: u64 = 60;

/// One cluster at a time: every scenario starts its own on the same ports.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every Chorus quorum queue has a replica on each node, and their leaders are spread over more
/// than one node; prints where the leaders are.
fn check_placement(cluster: &RabbitCluster) {
    let listed = cluster.rabbitmqctl(
        1,
        &[
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "--formatter",
            "json",
        ],
    );
    let queues: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let mut leaders = std::collections::BTreeMap::<String, Vec<String>>::new();
    for queue in queues.iter().filter(|q| q["type"] == "quorum") {
        let name = queue["name"].as_str().unwrap().to_owned();
        let members = queue["members"].as_array().map_or(0, Vec::len);
        assert_eq!(members, usize::from(NODES), "{name}: replicas {queue}");
        let leader = queue["leader"].as_str().unwrap_or("none").to_owned();
        leaders.entry(leader).or_default().push(name);
    }
    assert!(
        leaders.len() > 1,
        "quorum queue leaders all on one node: {leaders:?}"
    );
    let spread: Vec<String> = leaders
        .iter()
        .map(|(node, queues)| format!("{node}: {}", queues.len()))
        .collect();
    note(&format!(
        "[RabbitMQ cluster] quorum queue leaders: {}",
        spread.join(", ")
    ));
}

/// Times of "connected to RabbitMQ" in child `index`'s log.
fn connections(env: &TestEnv, index: usize) -> Vec<String> {
    env.log_of(index)
        .lines()
        .filter(|line| line.contains("connected to RabbitMQ"))
        .map(str::to_owned)
        .collect()
}

/// A fresh cluster and a test environment whose own client talks to node 1 (which stays up),
/// with Redis's test database 0 emptied.
async fn start(name: &str) -> (RabbitCluster, TestEnv) {
    let cluster = RabbitCluster::start();
    let redis_port = chorus_tests::services().redis_port;
    let env = TestEnv::with_urls(
        name,
        cluster.url(1),
        format!("redis://127.0.0.1:{redis_port}/0"),
        cluster.state_dir.join("logs"),
    );
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut env.redis().await)
        .await
        .unwrap();
    (cluster, env)
}

/// Flags of the orchestrator and the synthesizer: confirms that do not wait long on a node
/// that is gone.
const SERVICE_FLAGS: [&str; 2] = ["--publish-timeout-ms", "5000"];
/// A worker's: the suite's ([`worker_args`]: 8 subtasks at once, fast retries) and the same
/// confirm timeout.
fn worker_flags() -> Vec<&'static str> {
    [&worker_args()[..], &SERVICE_FLAGS[..]].concat()
}

/// Waits until the services' queues exist and have settled on the cluster (the 3 s of
/// [`wait_for_topology`]: a quorum queue replica killed right after its creation may be lost),
/// checks where their replicas and leaders are, submits `run` and waits until it is under way.
async fn submit_and_start(cluster: &RabbitCluster, env: &TestEnv, run: &[Planned]) {
    let client = env.client().await;
    wait_for_topology(&client).await;
    check_placement(cluster);
    submit(&client, run, "nobody-listens").await;
    wait_for_progress(env, run, SETTLED_BEFORE_FAULT).await;
}

/// Asserts that each of `services` is connected through `port` (its last connection's URL).
fn assert_connected_through(env: &TestEnv, services: &[usize], port: u16) {
    for &index in services {
        let last = connections(env, index).pop().unwrap_or_default();
        assert!(
            last.contains(&format!(":{port}/")),
            "service {index} not connected through port {port}: {last}"
        );
    }
}

/// Waits until each of `services` logged one more connection than `before` says, to a node not
/// reached through `port`, at most `limit` after `since`; how long each took.
async fn wait_until_moved(
    env: &TestEnv,
    services: &[usize],
    before: &[usize],
    port: u16,
    since: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let mut moved = Vec::new();
    for (&index, &earlier) in services.iter().zip(before) {
        loop {
            let lines = connections(env, index);
            if lines.len() > earlier {
                let line = lines.last().unwrap();
                assert!(
                    !line.contains(&format!(":{port}/")),
                    "reconnected to the lost node: {line}"
                );
                moved.push(since.elapsed());
                break;
            }
            assert!(
                since.elapsed() < limit,
                "service {index} was not connected to another node {limit:?} after node \
                 {VICTIM} was lost; its log:\n{}",
                env.log_of(index)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    moved
}

fn millis(times: &[Duration]) -> String {
    times
        .iter()
        .map(|elapsed| format!("{} ms", elapsed.as_millis()))
        .collect::<Vec<_>>()
        .join(" and ")
}

#[tokio::test(flavor = "multi_thread")]
async fn c01_a_node_killed_under_load_loses_nothing_and_its_services_move_to_another_node() {
    let _one = ONE_CLUSTER.lock().await;
    let (cluster, mut env) = start("c01").await;
    // Each service is given every node, starting with "its own".
    let on = |node: u16| cluster.urls_from(node);
    let services = [
        env.spawn_with(
            "chorus-orchestrator",
            &SERVICE_FLAGS,
            &[("CHORUS_AMQP_URL", &on(1))],
        ),
        env.spawn_with(
            "chorus-worker",
            &worker_flags(),
            &[("CHORUS_AMQP_URL", &on(VICTIM))],
        ),
        env.spawn_with(
            "chorus-worker",
            &worker_flags(),
            &[("CHORUS_AMQP_URL", &on(3))],
        ),
        env.spawn_with(
            "chorus-synthesizer",
            &SERVICE_FLAGS,
            &[("CHORUS_AMQP_URL", &on(VICTIM))],
        ),
    ];
    let on_victim = [services[1], services[3]];
    let run = tasks("c01", 16, 30, 150);
    submit_and_start(&cluster, &env, &run).await;
    let before: Vec<usize> = on_victim
        .iter()
        .map(|&i| connections(&env, i).len())
        .collect();
    let victim_port = cluster.base_port + VICTIM - 1;
    assert_connected_through(&env, &on_victim, victim_port);
    let killed = Instant::now();
    cluster.kill(VICTIM);
    let settled_at_kill = settled(&mut env.redis().await, &run).await;

    let moved = wait_until_moved(&env, &on_victim, &before, victim_port, killed, MOVE_LIMIT).await;
    let outcomes = collect_stored(&env, &run, DEADLINE).await;
    let report = check(&env, &run, &outcomes, 0).await;
    note(&format!(
        "[RabbitMQ cluster node SIGKILL, {settled_at_kill} subtasks settled at the kill] {report}; \
         services on the node reconnected elsewhere after {}",
        millis(&moved)
    ));
    assert!(report.is_clean(), "{report}");
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of moving to another node"
        );
    }

    // The node comes back and rejoins the cluster.
    let restarted = Instant::now();
    cluster.start_node(VICTIM);
    let status = cluster.rabbitmqctl(1, &["cluster_status", "--formatter", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["running_nodes"].as_array().map_or(0, Vec::len),
        usize::from(NODES),
        "node {VICTIM} did not rejoin: {status}"
    );
    note(&format!(
        "[RabbitMQ cluster] node {VICTIM} restarted and rejoined in {} ms",
        restarted.elapsed().as_millis()
    ));
}

/// A node reached through a relay that freezes (SIGSTOP: no byte forwarded, no socket closed)
/// is a host that vanished: nothing tells the services behind it but the silence. They must
/// give it up after two heartbeats without a frame (`--amqp-heartbeat-s`) and move on.
#[tokio::test(flavor = "multi_thread")]
async fn c02_a_node_that_stops_answering_is_left_after_the_heartbeat_and_nothing_is_lost() {
    let _one = ONE_CLUSTER.lock().await;
    let (cluster, mut env) = start("c02").await;
    let relay = Relay::start(cluster.base_port + VICTIM - 1);
    // Through the relay first, then the other nodes directly.
    let behind_relay = format!("{},{},{}", relay.url(), cluster.url(3), cluster.url(1));
    let heartbeat = HEARTBEAT_S.to_string();
    let relayed = [
        ("CHORUS_AMQP_URL", behind_relay.as_str()),
        ("CHORUS_AMQP_HEARTBEAT_S", heartbeat.as_str()),
    ];
    let services = [
        env.spawn_with(
            "chorus-orchestrator",
            &SERVICE_FLAGS,
            &[("CHORUS_AMQP_URL", &cluster.urls_from(1))],
        ),
        env.spawn_with("chorus-worker", &worker_flags(), &relayed),
        env.spawn_with(
            "chorus-worker",
            &worker_flags(),
            &[("CHORUS_AMQP_URL", &cluster.urls_from(3))],
        ),
        env.spawn_with("chorus-synthesizer", &SERVICE_FLAGS, &relayed),
    ];
    let behind = [services[1], services[3]];
    let run = tasks("c02", 16, 30, 150);
    submit_and_start(&cluster, &env, &run).await;
    let before: Vec<usize> = behind.iter().map(|&i| connections(&env, i).len()).collect();
    assert_connected_through(&env, &behind, relay.port);
    let frozen = Instant::now();
    relay.freeze();
    let settled_at_freeze = settled(&mut env.redis().await, &run).await;

    // Two heartbeats without a frame, noticed at the next check (lapin checks every half
    // heartbeat), then a connection to the next node; the rest is slack for a loaded machine.
    let bound = Duration::from_secs(2 * u64::from(HEARTBEAT_S) + 4);
    let moved = wait_until_moved(&env, &behind, &before, relay.port, frozen, bound).await;
    let outcomes = collect_stored(&env, &run, DEADLINE).await;
    let report = check(&env, &run, &outcomes, 0).await;
    note(&format!(
        "[RabbitMQ cluster node frozen behind a relay, heartbeat {HEARTBEAT_S} s, \
         {settled_at_freeze} subtasks settled at the freeze] {report}; services behind it \
         reconnected elsewhere after {}",
        millis(&moved)
    ));
    assert!(report.is_clean(), "{report}");
    for service in services {
        assert!(
            env.is_running(service),
            "a service exited instead of moving to another node"
        );
    }
}
