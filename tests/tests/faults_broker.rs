//! Fault scenarios of the broker: RabbitMQ restarted and SIGKILLed under load, a memory alarm,
//! channels closed for the consumer timeout, retries waiting in the delay queues through a
//! killed broker. docs/reliability.md lists what each proves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::fault::{
    assert_clean, check, collect_replies, collect_stored, note, settled, start, submit, tasks,
    wait_for_progress, wait_for_topology, worker_args, Cluster, Planned, DEADLINE,
};
use serde_json::json;

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
