//! `deploy/dead-bound.sh` bounds the existing `chorus.dead` of a running deployment with a policy
//! (no redeclare, so no PRECONDITION_FAILED): past the bound the oldest dead letters go first,
//! and removing the policy leaves the queue unbounded again.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{services, TestEnv};
use lapin::{
    options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
    BasicProperties,
};

/// Runs deploy/dead-bound.sh with `args` against the test broker; asserts it succeeded.
fn dead_bound(args: &[&str]) {
    let private = services().script(&[]);
    let services_sh = private.get_program().to_string_lossy().into_owned();
    let script = std::path::Path::new(&services_sh).with_file_name("dead-bound.sh");
    let mut command = std::process::Command::new(script);
    for (key, value) in private.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    let output = command
        .args(args)
        .env("RABBITMQCTL", format!("{services_sh} rabbitmqctl"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dead-bound.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_bounds_the_existing_dead_letter_queue_dropping_the_oldest() {
    let mut env = TestEnv::new("deadbound").await;
    env.spawn("chorus-orchestrator", &[]);
    let client = env.client().await;
    client.wait_for_queue("chorus.dead").await;

    dead_bound(&["--vhost", &env.vhost, "--max-length", "3"]);
    // The services redeclare the queue as before: the policy changed nothing they declare.
    let restarted = env.spawn("chorus-orchestrator", &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.is_running(restarted),
        "a service stopped after the policy"
    );

    for n in 0..5 {
        client
            .publish(
                "chorus.dead",
                n.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut count = 0;
    for _ in 0..50 {
        count = client
            .channel
            .queue_declare(
                ShortString::from("chorus.dead"),
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        if count == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, 3, "the bound did not hold");
    let mut kept = Vec::new();
    while let Some(message) = client
        .channel
        .basic_get(ShortString::from("chorus.dead"), BasicGetOptions::default())
        .await
        .unwrap()
    {
        kept.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(kept, ["2", "3", "4"], "drop-head keeps the newest");

    dead_bound(&["--vhost", &env.vhost, "--remove"]);
    for n in 0..5 {
        client
            .publish(
                "chorus.dead",
                n.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = client
        .channel
        .queue_declare(
            ShortString::from("chorus.dead"),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert_eq!(count, 5, "still bounded after --remove");
}
