//! Strict decoding end to end: what a submitter sends that serde would read positionally is
//! `rejected` naming the field, through the real services over real RabbitMQ and Redis.
#![allow(clippy::unwrap_used)]

use chorus_tests::{header, msgpack_to_json, next_message, TestEnv};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

const MSGPACK: &str = "application/msgpack";
const JSON: &str = "application/json";

/// Publishes `request` in `content_type` with a private reply queue; returns the outcome.
async fn submit(env: &TestEnv, request: &Value, content_type: &str) -> Value {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let body = if content_type == JSON {
        serde_json::to_vec(request).unwrap()
    } else {
        rmp_serde::to_vec_named(request).unwrap()
    };
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_reply_to(ShortString::from(reply_to.as_str()));
    client.publish("chorus.tasks", &body, properties).await;
    let reply = next_message(&mut replies).await;
    if content_type == JSON {
        serde_json::from_slice(&reply.data).unwrap()
    } else {
        msgpack_to_json(&reply.data)
    }
}

/// `{"kind": "range-sum", "input": [0, 9, 3]}` ran as `{start: 0, end: 9, parts: 3}`; now the
/// kind's input, like the request, decodes only from a map, in both encodings.
#[tokio::test(flavor = "multi_thread")]
async fn a_positional_input_is_rejected_naming_the_field() {
    let mut env = TestEnv::new("strictinput").await;
    env.start_system(1);
    let cases = [
        (
            json!({"kind": "range-sum", "input": [0, 9, 3]}),
            "input: expected a map, got an array",
        ),
        (
            json!({"kind": "range-sum", "input": {"start": 0, "end": 9, "parts": "x"}}),
            "input.parts: invalid type: string \"x\", expected u32",
        ),
        (
            json!({"kind": "range-sum", "input": {"start": 0, "end": 9, "parts": 3, "part": 1}}),
            "unknown field `part`",
        ),
    ];
    for content_type in [MSGPACK, JSON] {
        for (request, expected) in &cases {
            let outcome = submit(&env, request, content_type).await;
            assert_eq!(outcome["status"], "rejected", "{content_type}: {outcome}");
            let message = outcome["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(expected), "{content_type}: {message}");
        }
    }
    // The same input as a map runs.
    let request = json!({"kind": "range-sum", "input": {"start": 0, "end": 9, "parts": 3}});
    let outcome = submit(&env, &request, JSON).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], 36, "{outcome}");
}

/// A control message as an array would take its `op` from the first element; it is
/// dead-lettered with the reason, and the synthesizer serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_positional_control_message_is_dead_lettered() {
    let mut env = TestEnv::new("strictcontrol").await;
    env.start_system(1);
    let client = env.client().await;
    client.wait_for_queue("chorus.control").await;
    let properties = BasicProperties::default().with_content_type(ShortString::from(JSON));
    client
        .publish("chorus.control", br#"["cancel", "t-1"]"#, properties)
        .await;
    let dead = client.drain("chorus.dead", 1).await;
    let reason = header(&dead[0].delivery.properties, "x-chorus-reason").unwrap();
    assert!(reason.contains("expected a map, got an array"), "{reason}");
    let request = json!({"kind": "range-sum", "input": {"start": 0, "end": 4, "parts": 2}});
    let outcome = submit(&env, &request, MSGPACK).await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
}
