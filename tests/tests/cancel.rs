//! A cancel is never lost: one sent before any orchestrator has claimed its task is kept in
//! Redis and applied at the claim, so "submit, then cancel at once" always ends `cancelled`
//! (docs/protocol.md, "Cancelling"; issue 20, point 5).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{msgpack_to_json, next_message, RawClient, TestEnv, WAIT};
use lapin::{types::ShortString, BasicProperties, Consumer};
use redis::AsyncCommands;
use serde_json::{json, Value};

/// A task that would run for a while if nothing stopped it: four slices of a second each.
fn slow_request(id: &str) -> Value {
    json!({"kind": "range-sum", "id": id, "input": {"start": 0, "end": 40, "parts": 4, "delay_ms": 1000}})
}

/// Publishes the request of task `id`, then at once its cancel, both confirmed, the way a
/// submitter who changes its mind does.
async fn submit_then_cancel(client: &RawClient, reply_to: &str, id: &str) {
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(&slow_request(id)).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(reply_to)),
        )
        .await;
    let cancel = json!({"op": "cancel", "task": id, "reason": "changed my mind"});
    client
        .publish(
            "chorus.control",
            &rmp_serde::to_vec_named(&cancel).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_delivery_mode(2),
        )
        .await;
}

/// The outcomes of `count` tasks from `replies`, by task id.
async fn outcomes(
    replies: &mut Consumer,
    count: usize,
) -> std::collections::HashMap<String, Value> {
    let mut found = std::collections::HashMap::new();
    while found.len() < count {
        let outcome = msgpack_to_json(&next_message(replies).await.data);
        found.insert(outcome["id"].as_str().unwrap().to_owned(), outcome);
    }
    found
}

fn assert_cancelled_before_running(id: &str, outcome: &Value) {
    assert_eq!(outcome["status"], "cancelled", "{id}: {outcome}");
    let reason = outcome["errors"][0]["message"].as_str().unwrap_or("");
    assert!(reason.contains("changed my mind"), "{id}: {outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_sent_before_any_orchestrator_runs_is_applied_at_the_claim() {
    let mut env = TestEnv::new("earlycancel").await;
    env.spawn("chorus-synthesizer", &[]);
    let client = env.client().await;
    client.wait_for_consumers("chorus.control", 1).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let ids: Vec<String> = (0..3).map(|i| format!("early-{i}")).collect();
    for id in &ids {
        submit_then_cancel(&client, &reply_to, id).await;
    }
    // The CLI sends a cancel of a task Redis does not know yet, and says it is kept.
    let (code, out) = env
        .cli(&["cancel", "early-cli", "--reason", "changed my mind"])
        .await;
    assert_eq!(code, 4, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["cancel"],
        "kept"
    );
    // Every cancel is kept (with the outcome TTL) before any orchestrator exists.
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in ids.iter().map(String::as_str).chain(["early-cli"]) {
        let key = format!("chorus:{{{id}}}:cancel");
        loop {
            let ttl: i64 = redis.pttl(&key).await.unwrap();
            if ttl > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cancel of {id} was never kept in {key}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cli_request = slow_request("early-cli");
    client
        .publish(
            "chorus.tasks",
            &rmp_serde::to_vec_named(&cli_request).unwrap(),
            BasicProperties::default()
                .with_content_type(ShortString::from("application/msgpack"))
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(reply_to.as_str())),
        )
        .await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &[]);
    let found = outcomes(&mut replies, ids.len() + 1).await;
    for (id, outcome) in &found {
        assert_cancelled_before_running(id, outcome);
        // Nothing was planned, so nothing was published or run.
        let (code, out) = env.cli(&["status", id]).await;
        assert_eq!(code, 0, "{out}");
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["published"], 0, "{id}: {status}");
        // The kept cancel went into the task when it was applied.
        let kept: bool = redis
            .exists(format!("chorus:{{{id}}}:cancel"))
            .await
            .unwrap();
        assert!(!kept, "{id}: the kept cancel outlived its claim");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_then_cancel_at_once_always_ends_cancelled() {
    let mut env = TestEnv::new("quickcancel").await;
    env.start_system(1);
    let client = env.client().await;
    client.wait_for_consumers("chorus.tasks", 1).await;
    client.wait_for_consumers("chorus.control", 1).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let ids: Vec<String> = (0..20).map(|i| format!("quick-{i}")).collect();
    for id in &ids {
        submit_then_cancel(&client, &reply_to, id).await;
    }
    let found = outcomes(&mut replies, ids.len()).await;
    for (id, outcome) in &found {
        assert_cancelled_before_running(id, outcome);
    }
}
