//! Batching end to end: `options.batch_size` packs subtasks per message, workers run a batch
//! side by side and publish its results as one message, and the synthesizer records each
//! subtask once — however often a batch travels.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{header, msgpack_to_json, next_message, RawClient, TestEnv};
use lapin::{message::BasicGetMessage, types::ShortString, BasicProperties};
use serde_json::{json, Value};

const RETRY_FLAGS: [&str; 4] = ["--retry-base-delay-ms", "20", "--retry-max-delay-ms", "200"];

fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap()
}

fn sum_of(start: i64, end: i64) -> i64 {
    (start..end).sum()
}

/// Submits a request with a private reply queue; returns the consumer of the replies.
async fn submit(client: &RawClient, request: &Value) -> lapin::Consumer {
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, replies) = client.reply_queue().await;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to));
    client
        .publish("chorus.tasks", &msgpack(request), properties)
        .await;
    replies
}

fn message_type(message: &BasicGetMessage) -> Option<&str> {
    message
        .delivery
        .properties
        .kind()
        .as_ref()
        .map(ShortString::as_str)
}

/// Puts drained messages back, with their properties.
async fn republish(client: &RawClient, queue: &str, messages: &[BasicGetMessage]) {
    for message in messages {
        client
            .publish(
                queue,
                &message.delivery.data,
                message.delivery.properties.clone(),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batched_fan_out_travels_in_batches_both_ways_and_counts_each_subtask_once() {
    let mut env = TestEnv::new("batched").await;
    let client = env.client().await;
    env.spawn("chorus-orchestrator", &[]);
    let mut replies = submit(
        &client,
        &json!({"kind": "range-sum", "id": "batched", "input": {"start": 0, "end": 100_000, "parts": 1000},
                "options": {"batch_size": 100}}),
    )
    .await;

    // A thousand subtasks leave the orchestrator as ten messages of a hundred.
    let subtasks = client.drain("chorus.subtasks", 10).await;
    assert_eq!(subtasks.len(), 10);
    let mut ids = std::collections::BTreeSet::new();
    for message in &subtasks {
        assert_eq!(message_type(message), Some("chorus.subtask-batch"));
        let batch = msgpack_to_json(&message.delivery.data);
        assert_eq!(batch["task"], "batched");
        let items = batch["items"].as_array().unwrap();
        assert_eq!(items.len(), 100);
        ids.extend(
            items
                .iter()
                .map(|item| item["subtask"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(ids.len(), 1000);
    // One batch travels twice, as after a redelivery.
    republish(&client, "chorus.subtasks", &subtasks).await;
    republish(&client, "chorus.subtasks", &subtasks[3..4]).await;

    // Their results come back as eleven messages of a hundred results.
    env.spawn("chorus-worker", &RETRY_FLAGS);
    let results = client.drain("chorus.results", 11).await;
    assert_eq!(results.len(), 11);
    for message in &results {
        assert_eq!(message_type(message), Some("chorus.result-batch"));
        let batch = msgpack_to_json(&message.delivery.data);
        assert_eq!(batch["results"].as_array().unwrap().len(), 100);
    }
    republish(&client, "chorus.results", &results).await;

    env.spawn("chorus-synthesizer", &[]);
    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 100_000));
    assert_eq!(outcome["output"]["parts"], 1000);
    assert_eq!(outcome["stats"]["subtasks"], 1000);
    assert_eq!(outcome["stats"]["succeeded"], 1000);
    // The duplicate batch may be recorded after the outcome went out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, status) = env.cli(&["status", "batched"]).await;
        assert_eq!(code, 0, "{status}");
        let status: Value = serde_json::from_str(&status).unwrap();
        if status["duplicate_results"] == 100 || tokio::time::Instant::now() > deadline {
            assert_eq!(status["duplicate_results"], 100, "{status}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_and_retries_inside_a_batch_settle_each_subtask_on_its_own() {
    let mut env = TestEnv::new("batchfail").await;
    let client = env.client().await;
    env.start_system(1);
    let mut replies = submit(
        &client,
        &json!({"kind": "range-sum", "id": "batch-fail",
                "input": {"start": 0, "end": 1000, "parts": 40, "poison": [3, 17], "fail_attempts": 1},
                "options": {"batch_size": 16, "max_attempts": 2, "on_failure": "continue"}}),
    )
    .await;
    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(
        outcome["output"]["sum"],
        sum_of(0, 1000) - sum_of(75, 100) - sum_of(425, 450)
    );
    assert_eq!(outcome["stats"]["succeeded"], 38);
    assert_eq!(outcome["stats"]["failed"], 2);
    // Every subtask failed its first attempt and went on alone, once.
    assert_eq!(outcome["stats"]["retries"], 40);
    let failed: Vec<&str> = outcome["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subtask"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["3", "17"]);

    // Each subtask that failed for good is in chorus.dead as a subtask message of its own.
    let dead = client.drain("chorus.dead", 2).await;
    assert_eq!(dead.len(), 2);
    let mut dead_ids: Vec<String> = dead
        .iter()
        .map(|message| {
            let body = msgpack_to_json(&message.delivery.data);
            assert_eq!(
                header(&message.delivery.properties, "x-chorus-subtask").as_deref(),
                body["subtask"].as_str()
            );
            body["subtask"].as_str().unwrap().to_owned()
        })
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, ["17", "3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_runs_no_more_of_a_batch_at_once_than_its_concurrency() {
    let mut env = TestEnv::new("batchconc").await;
    let client = env.client().await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let mut args = vec!["--concurrency", "4"];
    args.extend(RETRY_FLAGS);
    env.spawn("chorus-worker", &args);
    let mut replies = submit(
        &client,
        &json!({"kind": "range-sum", "id": "batch-conc",
                "input": {"start": 0, "end": 2400, "parts": 24, "delay_ms": 100, "trace": true},
                "options": {"batch_size": 12}}),
    )
    .await;
    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 2400));
    let peak = outcome["output"]["peak_in_flight"].as_u64().unwrap();
    assert!((3..=4).contains(&peak), "peak {peak} with --concurrency 4");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_size_out_of_range_is_rejected() {
    let mut env = TestEnv::new("batchbad").await;
    let client = env.client().await;
    env.start_system(1);
    let mut replies = submit(
        &client,
        &json!({"kind": "range-sum", "id": "batch-bad", "input": {"start": 0, "end": 10, "parts": 2},
                "options": {"batch_size": 5000}}),
    )
    .await;
    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    assert!(
        outcome["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("options.batch_size must be between 1 and 1000"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_of_subtasks_that_settle_together_share_a_message() {
    let mut env = TestEnv::new("coalesced").await;
    let client = env.client().await;
    env.spawn("chorus-orchestrator", &[]);
    // Sixty subtasks, one per message, that all sleep the same 300 ms side by side: their
    // results are ready within a few milliseconds of each other.
    let mut replies = submit(
        &client,
        &json!({"kind": "range-sum", "id": "coalesced",
                "input": {"start": 0, "end": 6000, "parts": 60, "delay_ms": 300}}),
    )
    .await;
    env.spawn("chorus-worker", &["--concurrency", "100"]);

    // No synthesizer yet: the results wait in chorus.results to be looked at.
    let mut messages = Vec::new();
    let mut subtasks = std::collections::BTreeSet::new();
    let mut results = 0;
    while results < 60 {
        for message in client.drain("chorus.results", 1).await {
            let body = msgpack_to_json(&message.delivery.data);
            let carried: Vec<Value> = if message_type(&message) == Some("chorus.result-batch") {
                body["results"].as_array().unwrap().clone()
            } else {
                vec![body]
            };
            for result in &carried {
                assert_eq!(result["task"], "coalesced");
                subtasks.insert(result["subtask"].as_str().unwrap().to_owned());
            }
            results += carried.len();
            messages.push(message);
        }
    }
    assert_eq!(results, 60, "a result went out twice");
    assert_eq!(subtasks.len(), 60);
    assert!(
        messages.len() < 60,
        "60 results that settled together took {} messages",
        messages.len()
    );
    println!(
        "[coalesced results] 60 results in {} messages",
        messages.len()
    );

    // The synthesizer takes them, alone or together, and counts each subtask once.
    republish(&client, "chorus.results", &messages).await;
    env.spawn("chorus-synthesizer", &[]);
    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 6000));
    assert_eq!(outcome["stats"]["succeeded"], 60);
}
