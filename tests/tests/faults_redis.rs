//! Fault scenarios of Redis: restarted, SIGKILLed with `appendonly yes`, and paused longer than
//! the command timeout, while tasks run. docs/reliability.md lists what each proves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::fault::{
    assert_clean, check, collect_replies, start, submit, tasks, wait_for_progress, worker_args,
    Cluster, DEADLINE,
};

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
