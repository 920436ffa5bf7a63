//! The RabbitMQ cluster scenario: the services on different nodes of a real 3-node cluster
//! (stand-ins for different hosts), one node SIGKILLed under load; the oracle then checks that
//! nothing was lost, counted twice or stuck, and the services that were on that node must have
//! moved to another within seconds. docs/reliability.md lists the figures.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chorus_tests::{
    fault::{check, collect_stored, note, Planned},
    rabbit_cluster::{RabbitCluster, NODES},
    TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
/// Longest time a service on the killed node may take to be consuming on another one.
const MOVE_LIMIT: Duration = Duration::from_secs(15);
/// The node the scenario kills.
const VICTIM: u16 = 2;

fn tasks(count: usize, parts: u32, delay_ms: u64) -> Vec<Planned> {
    (0..count)
        .map(|i| Planned {
            id: format!("c01-{i}"),
            start: -1000 * i as i64,
            end: 100_000 + 7919 * i as i64,
            parts,
            // Every third task has a poisoned subtask: retries through the delay queues too.
            poison: if i % 3 == 2 { vec![1] } else { vec![] },
            delay_ms,
            shape: Value::Null,
            options: Value::Null,
        })
        .collect()
}

/// Subtasks of `tasks` settled so far, as Redis counts them.
async fn settled(env: &TestEnv, tasks: &[Planned]) -> u64 {
    let mut redis = env.redis().await;
    let mut total = 0;
    for task in tasks {
        let counts: Vec<Option<u64>> = redis::cmd("HMGET")
            .arg(format!("chorus:{{{}}}:task", task.id))
            .arg("succeeded")
            .arg("failed")
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        total += counts.into_iter().flatten().sum::<u64>();
    }
    total
}

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

#[tokio::test(flavor = "multi_thread")]
async fn c01_a_node_killed_under_load_loses_nothing_and_its_services_move_to_another_node() {
    let cluster = RabbitCluster::start();
    let redis_port = chorus_tests::services().redis_port;
    // The test's own client talks to node 1, which stays up.
    let mut env = TestEnv::with_urls(
        "c01",
        cluster.url(1),
        format!("redis://127.0.0.1:{redis_port}/0"),
        cluster.state_dir.join("logs"),
    );
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut env.redis().await)
        .await
        .unwrap();
    let fast = ["--publish-timeout-ms", "5000"];
    let worker = [
        "--concurrency",
        "8",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
        "--publish-timeout-ms",
        "5000",
    ];
    // Each service is given every node, starting with "its own".
    let on = |node: u16| cluster.urls_from(node);
    let services = [
        env.spawn_with("chorus-orchestrator", &fast, &[("CHORUS_AMQP_URL", &on(1))]),
        env.spawn_with(
            "chorus-worker",
            &worker,
            &[("CHORUS_AMQP_URL", &on(VICTIM))],
        ),
        env.spawn_with("chorus-worker", &worker, &[("CHORUS_AMQP_URL", &on(3))]),
        env.spawn_with(
            "chorus-synthesizer",
            &fast,
            &[("CHORUS_AMQP_URL", &on(VICTIM))],
        ),
    ];
    let on_victim = [services[1], services[3]];
    let client = env.client().await;
    for queue in [
        "chorus.tasks",
        "chorus.subtasks",
        "chorus.results",
        "chorus.dead",
    ] {
        client.wait_for_queue(queue).await;
    }
    // RabbitMQ 3.10 may lose a quorum queue replica killed right after its creation (see
    // fault::Cluster::prepare_for_broker_restarts); the scenario is about a running system.
    tokio::time::sleep(Duration::from_secs(3)).await;
    check_placement(&cluster);

    let run = tasks(16, 30, 150);
    for task in &run {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from("nobody-listens"));
        let body = rmp_serde::to_vec_named(&task.request()).unwrap();
        client.publish("chorus.tasks", &body, properties).await;
    }
    let until = tokio::time::Instant::now() + DEADLINE;
    while settled(&env, &run).await < 60 {
        assert!(
            tokio::time::Instant::now() < until,
            "no progress before the kill: fewer than 60 subtasks settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: Vec<usize> = on_victim
        .iter()
        .map(|&i| connections(&env, i).len())
        .collect();
    let victim_port = format!(":{}/", cluster.base_port + VICTIM - 1);
    for &index in &on_victim {
        let last = connections(&env, index).pop().unwrap_or_default();
        assert!(
            last.contains(&victim_port),
            "service {index} not on node {VICTIM}: {last}"
        );
    }
    let killed = Instant::now();
    cluster.kill(VICTIM);
    let settled_at_kill = settled(&env, &run).await;

    let mut moved = Vec::new();
    for (&index, &earlier) in on_victim.iter().zip(&before) {
        loop {
            let lines = connections(&env, index);
            if lines.len() > earlier {
                let line = lines.last().unwrap();
                assert!(
                    !line.contains(&victim_port),
                    "reconnected to the dead node: {line}"
                );
                moved.push(killed.elapsed());
                break;
            }
            assert!(
                killed.elapsed() < MOVE_LIMIT,
                "service {index} was not connected to another node {MOVE_LIMIT:?} after node \
                 {VICTIM} was killed; its log:\n{}",
                env.log_of(index)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let outcomes = collect_stored(&env, &run, DEADLINE).await;
    let report = check(&env, &run, &outcomes, 0).await;
    note(&format!(
        "[RabbitMQ cluster node SIGKILL, {settled_at_kill} subtasks settled at the kill] {report}; \
         services on the node reconnected elsewhere after {}",
        moved
            .iter()
            .map(|elapsed| format!("{} ms", elapsed.as_millis()))
            .collect::<Vec<_>>()
            .join(" and ")
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
