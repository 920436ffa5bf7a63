//! The Redis Cluster fault scenario: tasks run on the test cluster (`deploy/redis-cluster.sh`,
//! 3 masters and 3 replicas), the master that holds a task's slot is killed (SIGKILL) mid-run,
//! its replica takes over, and the oracle of `chorus_tests::fault` checks that nothing was lost,
//! counted twice or stuck. Needs the cluster (`CHORUS_TEST_REDIS_CLUSTER_PORT`), so it is
//! ignored in the plain run and `deploy/test.sh` runs it in its cluster step.
#![allow(clippy::unwrap_used)]

use std::{
    process::Output,
    time::{Duration, Instant},
};

use chorus_tests::{
    fault::{check, collect_replies, wait_for_progress, Planned},
    redis_cluster, TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::Value;

/// Longest wait for the outcomes after the kill.
const DEADLINE: Duration = Duration::from_secs(120);

fn run_script(first: u16, args: &[&str]) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = redis_cluster::script(first, args).output().unwrap();
    assert!(
        status.success(),
        "deploy/redis-cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8_lossy(&stdout).trim().to_owned()
}

fn tasks(count: usize) -> Vec<Planned> {
    (0..count)
        .map(|i| Planned {
            id: format!("rcf-{i}"),
            start: -1000 * i as i64,
            end: 100_000 + 7919 * i as i64,
            parts: 30,
            // Every third task has a poisoned subtask, so `partial` outcomes are checked too.
            poison: if i % 3 == 2 { vec![1] } else { vec![] },
            delay_ms: 30,
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
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks(9);
    for task in &run {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_delivery_mode(2)
            .with_reply_to(ShortString::from(reply_to.as_str()));
        let body = rmp_serde::to_vec_named(&task.request()).unwrap();
        client.publish("chorus.tasks", &body, properties).await;
    }
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
    eprintln!("{line}");
    let path = chorus_tests::repo_dir().join(".chorus/fault/report.txt");
    drop(std::fs::create_dir_all(path.parent().unwrap()));
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        drop(writeln!(file, "{line}"));
    }
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
