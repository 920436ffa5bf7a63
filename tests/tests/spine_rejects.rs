//! End-to-end tests of what the spine refuses, through the real binaries over real RabbitMQ and
//! Redis: unknown kinds, input the planner rejects, planners and syntheses that panic, bad
//! messages on every queue; each is rejected or dead-lettered with a reason and the services
//! serve on.
#![allow(clippy::unwrap_used)]

use chorus_tests::{
    header, msgpack_to_json, next_message,
    spine::{msgpack, request_properties, run_task, sum_of, JSON, MSGPACK},
    TestEnv,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kind_is_rejected_and_dead_lettered() {
    let mut env = TestEnv::new("unknownkind").await;
    env.start_system(1);
    let client = env.client().await;
    let outcome = run_task(
        &env,
        json!({"kind": "no-such-kind", "id": "k-1", "input": null}),
    )
    .await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown kind \"no-such-kind\"") && message.contains("range-sum"),
        "{message}"
    );
    let dead = client.drain("chorus.dead", 1).await;
    let reason = header(&dead[0].delivery.properties, "x-chorus-reason").unwrap();
    assert!(reason.contains("no-such-kind"), "{reason}");
    assert_eq!(
        header(&dead[0].delivery.properties, "x-chorus-queue").as_deref(),
        Some("chorus.tasks")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_rejected_by_the_planner() {
    let mut env = TestEnv::new("badinput").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 10, "end": 0, "parts": 2}}),
    )
    .await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("invalid input")
            && message.contains("end (0) must not be below start (10)"),
        "{message}"
    );
}

/// Range-sum plans and synthesizes on the services' own thread (`Kind::INLINE`): a panic there
/// must end the task, not the service.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_planner_or_synthesis_ends_its_task_and_the_services_serve_on() {
    let mut env = TestEnv::new("kindpanic").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 2, "plan_panics": true}}),
    )
    .await;
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("panicked") && message.contains("the planner panics by request"),
        "{message}"
    );
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 2, "synthesis_panics": true}}),
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let message = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("synthesis panicked")
            && message.contains("the synthesis panics by request"),
        "{message}"
    );
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 2}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 10), "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_task_messages_are_rejected_dead_lettered_and_do_not_stall_the_orchestrator() {
    let mut env = TestEnv::new("badtasks").await;
    env.start_system(1);
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "garbage",
            b"\xc1\xff not msgpack".to_vec(),
            MSGPACK,
            "cannot decode body",
        ),
        (
            "missing-kind",
            msgpack(&json!({"input": 1})),
            MSGPACK,
            "missing field `kind`",
        ),
        (
            "wrong-type",
            br#"{"kind": 7, "input": 1}"#.to_vec(),
            JSON,
            "invalid type",
        ),
        (
            "bad-option",
            br#"{"kind": "range-sum", "input": 1, "options": {"max_attempts": 0}}"#.to_vec(),
            JSON,
            "max_attempts",
        ),
        (
            "text",
            b"hello".to_vec(),
            "text/plain",
            "unsupported content_type",
        ),
        ("huge", vec![b' '; 9 * 1024 * 1024], JSON, "over the limit"),
        // Strict decoding: objects only from maps, no unknown fields (docs/protocol.md).
        (
            "positional-request",
            msgpack(&json!(["range-sum", {"start": 0, "end": 9, "parts": 3}])),
            MSGPACK,
            "cannot decode body: expected a map, got an array",
        ),
        (
            "positional-options",
            br#"{"kind": "range-sum", "input": 1, "options": [1]}"#.to_vec(),
            JSON,
            "options: expected a map, got an array",
        ),
        (
            "positional-options-msgpack",
            msgpack(&json!({"kind": "range-sum", "input": 1, "options": [1]})),
            MSGPACK,
            "options: expected a map, got an array",
        ),
        (
            "unknown-field",
            br#"{"kind": "range-sum", "input": 1, "priority": 9}"#.to_vec(),
            JSON,
            "unknown field `priority`",
        ),
    ];
    for (correlation, body, content_type, _) in &cases {
        client
            .publish(
                "chorus.tasks",
                body,
                request_properties(content_type, &reply_to, correlation),
            )
            .await;
    }
    for _ in &cases {
        let reply = next_message(&mut replies).await;
        let correlation = reply
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str()
            .to_owned();
        let (_, _, content_type, expected) = cases.iter().find(|c| c.0 == correlation).unwrap();
        let outcome = if *content_type == JSON {
            assert_eq!(
                reply
                    .properties
                    .content_type()
                    .as_ref()
                    .map(ShortString::as_str),
                Some(JSON)
            );
            serde_json::from_slice::<Value>(&reply.data).unwrap()
        } else {
            msgpack_to_json(&reply.data)
        };
        assert_eq!(outcome["status"], "rejected", "{correlation}: {outcome}");
        let message = outcome["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{correlation}: {message}");
    }
    let dead = client.drain("chorus.dead", cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    for message in &dead {
        assert!(header(&message.delivery.properties, "x-chorus-reason").is_some());
    }
    // The orchestrator still serves.
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 2}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_messages_on_internal_queues_are_dead_lettered_with_a_reason() {
    let mut env = TestEnv::new("badinternal").await;
    env.start_system(1);
    let client = env.client().await;
    client.wait_for_queue("chorus.results").await;
    client.wait_for_queue("chorus.subtasks").await;
    let props = BasicProperties::default().with_content_type(ShortString::from(MSGPACK));
    client
        .publish("chorus.subtasks", b"\x00\x01garbage", props.clone())
        .await;
    client
        .publish("chorus.results", b"not a result", props.clone())
        .await;
    let stray =
        json!({"task": "no-such-task", "subtask": "0", "attempts": 1, "outcome": {"failed": "x"}});
    client
        .publish("chorus.results", &msgpack(&stray), props.clone())
        .await;
    let dead = client.drain("chorus.dead", 3).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            (
                header(&m.delivery.properties, "x-chorus-queue").unwrap(),
                header(&m.delivery.properties, "x-chorus-reason").unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "chorus.results");
    assert_eq!(reasons[1].0, "chorus.results");
    assert_eq!(reasons[2].0, "chorus.subtasks");
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("unknown task \"no-such-task\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .filter(|(_, r)| r.contains("cannot decode body"))
            .count()
            == 2,
        "{reasons:?}"
    );
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 3}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
}
