//! `chorus dead` against the real broker: list and show lose nothing, requeue sends a letter back
//! to its queue without the dead-letter headers and removes it, purge asks unless --yes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{repo_dir, services, TestEnv};
use lapin::{
    options::BasicGetOptions,
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde_json::Value;

/// Runs rabbitmqctl against the test broker; asserts it succeeded.
fn rabbitmqctl(args: &[&str]) {
    let mut all = vec!["rabbitmqctl"];
    all.extend_from_slice(args);
    let status = services()
        .script(&all)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// Makes `user` with the `admin` permissions deploy/acl/rabbitmq.permissions gives, in `vhost`.
fn add_admin(user: &str, vhost: &str) {
    let file = std::fs::read_to_string(repo_dir().join("deploy/acl/rabbitmq.permissions")).unwrap();
    let line = file
        .lines()
        .find(|l| l.starts_with("admin "))
        .expect("an admin line");
    let patterns: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert_eq!(patterns.len(), 3, "{line}");
    rabbitmqctl(&["add_user", user, "admin-secret"]);
    let mut args = vec!["set_permissions", "-p", vhost, user];
    args.extend(patterns);
    rabbitmqctl(&args);
}

async fn dead_list(env: &TestEnv) -> Vec<Value> {
    let (code, out) = env.cli(&["dead", "list", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_shown_requeued_and_purged() {
    let mut env = TestEnv::new("admin-dead").await;
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    let client = env.client().await;
    client.wait_for_consumers("chorus.tasks", 1).await;
    // Every `chorus dead` below runs as a user with the documented admin permissions only.
    let admin = format!("{}-admin", env.vhost);
    add_admin(&admin, &env.vhost);
    env.vars.push((
        "CHORUS_AMQP_URL".into(),
        format!(
            "amqp://{admin}:admin-secret@127.0.0.1:{}/{}",
            services().amqp_port,
            env.vhost
        ),
    ));
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-mine"),
        AMQPValue::LongString("kept".into()),
    );
    for body in ["garbage-1", "garbage-22"] {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers.clone());
        client
            .publish("chorus.tasks", body.as_bytes(), properties)
            .await;
    }
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = dead_list(&env).await;
        if listed.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["queue"], "chorus.tasks");
    assert!(
        listed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot decode"),
        "{listed:?}"
    );
    let sizes: Vec<u64> = listed.iter().map(|l| l["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [9, 10]);
    let key = listed[0]["key"].as_str().unwrap().to_owned();

    // Show prints one, with its headers and body; looking removed nothing.
    let (code, out) = env.cli(&["dead", "show", &key]).await;
    assert_eq!(code, 0, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["body"], "garbage-1");
    assert!(
        shown["letter"]["headers"]["x-chorus-reason"].is_string(),
        "{shown}"
    );
    assert_eq!(dead_list(&env).await.len(), 2);
    let (code, out) = env.cli(&["dead", "show", "000000000000"]).await;
    assert_eq!(code, 4, "{out}");

    // Requeue, with nobody consuming chorus.tasks: the copy waits there, its own headers kept
    // and the dead-letter ones gone; the letter left chorus.dead.
    env.kill(orchestrator);
    let (code, out) = env.cli(&["dead", "requeue", &key]).await;
    assert_eq!(code, 0, "{out}");
    let requeued: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(requeued[0]["queue"], "chorus.tasks", "{requeued}");
    let back = client
        .channel
        .basic_get(
            ShortString::from("chorus.tasks"),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the requeued message in chorus.tasks");
    assert_eq!(&back.delivery.data[..], b"garbage-1");
    let back_headers = back
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    // (chorus.tasks, a quorum queue, may count the delivery of the copy itself.)
    let names: Vec<&str> = back_headers
        .inner()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| *k != "x-delivery-count")
        .collect();
    assert_eq!(names, ["x-mine"], "dead-letter headers left on the copy");
    let left = dead_list(&env).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["size"], 10);

    // Purge: refused without a terminal or --yes, then done with --yes.
    let (code, out) = env.cli(&["dead", "purge"]).await;
    assert_eq!(code, 64, "{out}");
    assert_eq!(dead_list(&env).await.len(), 1);
    let (code, out) = env.cli(&["dead", "purge", "--yes"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("purged 1"), "{out}");
    assert!(dead_list(&env).await.is_empty());
    rabbitmqctl(&["delete_user", &admin]);
}
