//! Fault scenarios of what arrives: duplicate tasks, subtasks and results, poison that panics
//! or crashes its worker, hostile messages on every queue. docs/reliability.md lists what each
//! proves.
#![allow(clippy::unwrap_used)]

use chorus_tests::fault::{
    assert_clean, check, collect_replies, msgpack, note, start, submit, submit_as,
    supervise_until_reply, tasks, wait_for_state, wait_for_topology, worker_args, Cluster,
    DEADLINE,
};
use lapin::{types::ShortString, BasicProperties};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn s07_duplicate_tasks_subtasks_and_results_change_nothing() {
    let cluster = Cluster::start("s07");
    let (mut env, client) = start(&cluster, "s07").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-worker", &worker_args());
    env.spawn("chorus-synthesizer", &[]);
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s07", 1, 10, 300);
    let task = &run[0];
    for correlation_id in ["first", "second", "third"] {
        submit_as(&client, &run, &reply_to, Some(correlation_id)).await;
    }
    // The copies must find the task planned, or they are (rightly) dead-lettered as strays.
    wait_for_state(&env, "chorus:{s07-0}:task", "running").await;
    let properties =
        BasicProperties::default().with_content_type(ShortString::from("application/msgpack"));
    for index in [2_u32, 5] {
        let (start, end) =
            chorus_shared::kinds::range_sum::slice_bounds(task.start, task.end, task.parts, index);
        let slice = json!({"index": index, "start": start, "end": end, "delay_ms": 0, "fail_attempts": 0, "poison": false});
        let subtask = json!({
            "task": task.id, "subtask": index.to_string(), "kind": "range-sum", "attempt": 1,
            "max_attempts": 2, "timeout_ms": 10_000, "payload": serde_bytes::ByteBuf::from(msgpack(&slice)),
        });
        let sum = i64::try_from(chorus_shared::kinds::range_sum::sum_of_range(start, end)).unwrap();
        let output = serde_bytes::ByteBuf::from(msgpack(&json!({"sum": sum})));
        let result = json!({"task": task.id, "subtask": index.to_string(), "attempts": 1, "outcome": {"succeeded": output}});
        for _ in 0..2 {
            client
                .publish(
                    "chorus.subtasks",
                    &rmp_serde::to_vec_named(&subtask).unwrap(),
                    properties.clone(),
                )
                .await;
            client
                .publish(
                    "chorus.results",
                    &rmp_serde::to_vec_named(&result).unwrap(),
                    properties.clone(),
                )
                .await;
        }
    }
    let collected = collect_replies(&mut replies, 1, DEADLINE).await;
    let report = check(&env, &run, &collected.outcomes, collected.conflicting).await;
    assert_clean("duplicates of tasks, subtasks and results", &report);
    assert!(report.duplicate_executions >= 4, "{report}");
    assert_eq!(
        collected.counts.get(&task.id),
        Some(&3),
        "each of the three submissions gets the one outcome"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s08_poison_that_panics_or_crashes_its_worker_ends_in_chorus_dead_and_innocents_do_not() {
    let cluster = Cluster::start("s08");
    let (mut env, client) = start(&cluster, "s08").await;
    env.spawn("chorus-orchestrator", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let crash_failpoint = [("CHORUS_FAILPOINTS", "range-sum.crash=abort")];
    let crashing_worker = [
        "--concurrency",
        "4",
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "100",
    ];
    let worker = env.spawn_with("chorus-worker", &crashing_worker, &crash_failpoint);
    wait_for_topology(&client).await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let request = json!({
        "kind": "range-sum", "id": "s08",
        "input": {"start": 0, "end": 1200, "parts": 12, "panic": [2], "crash": [7], "delay_ms": 100},
        "options": {"max_attempts": 3, "on_failure": "continue"},
    });
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_reply_to(ShortString::from(reply_to.as_str()));
    client
        .publish("chorus.tasks", &msgpack(&request), properties)
        .await;

    // Play supervisor: restart the worker each time the poison takes it down.
    let (outcome, crashes) = supervise_until_reply(
        &mut env,
        &mut replies,
        worker,
        ("chorus-worker", &crashing_worker, &crash_failpoint),
    )
    .await;
    note(&format!(
        "[poison] worker crashes before the crashing subtask was given up: {crashes}"
    ));
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 10);
    assert_eq!(outcome["stats"]["failed"], 2);
    let failed: Vec<&str> = outcome["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subtask"].as_str())
        .collect();
    assert_eq!(failed, ["2", "7"], "only the culprits fail");
    let (a, b) = chorus_shared::kinds::range_sum::slice_bounds(0, 1200, 12, 2);
    let (c, d) = chorus_shared::kinds::range_sum::slice_bounds(0, 1200, 12, 7);
    let expected = (0..1200).sum::<i64>() - (a..b).sum::<i64>() - (c..d).sum::<i64>();
    assert_eq!(outcome["output"]["sum"], expected);
    assert!(
        crashes >= 4,
        "the crashing subtask ran until the limit: {crashes} crashes"
    );
    let dead = client.drain("chorus.dead", 2).await;
    let mut culprits: Vec<String> = dead
        .iter()
        .map(|m| chorus_tests::header(&m.delivery.properties, "x-chorus-subtask").unwrap())
        .collect();
    culprits.sort();
    // A worker killed between confirming a dead letter and acking its delivery dead-letters
    // that subtask again when the delivery comes back (at least once, as every publish + ack):
    // a culprit may appear twice, an innocent never.
    culprits.dedup();
    assert_eq!(
        culprits,
        ["2", "7"],
        "innocent co-delivered subtasks are not dead-lettered"
    );
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| chorus_tests::header(&m.delivery.properties, "x-chorus-reason").unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("panicked")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("without finishing")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s09_hostile_input_on_every_queue_is_dead_lettered_with_bounded_memory() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let cluster = Cluster::start("s09");
    let (mut env, client) = start(&cluster, "s09").await;
    let services = [
        env.spawn("chorus-orchestrator", &[]),
        env.spawn("chorus-worker", &worker_args()),
        env.spawn("chorus-synthesizer", &[]),
    ];
    wait_for_topology(&client).await;
    // As large as a header frame may be (the broker's frame_max is 128 KiB).
    let mut huge_headers = FieldTable::default();
    for i in 0..1100 {
        huge_headers.insert(
            ShortString::from(format!("h{i}")),
            AMQPValue::LongString(LongString::from(vec![b'x'; 100])),
        );
    }
    let plain = BasicProperties::default();
    let bodies: Vec<(&str, Vec<u8>, BasicProperties)> = vec![
        ("garbage", b"\xc1\xc1\xc1".to_vec(), plain.clone()),
        (
            "wrong schema",
            msgpack(&json!({"hello": "world"})),
            plain.clone(),
        ),
        (
            "missing ids",
            msgpack(&json!({"kind": "range-sum"})),
            plain.clone(),
        ),
        ("10 MiB", vec![0x90; 10 * 1024 * 1024], plain.clone()),
        (
            "huge header table",
            b"\xc1".to_vec(),
            plain.clone().with_headers(huge_headers),
        ),
        (
            "stray id",
            msgpack(
                &json!({"task": "nobody", "subtask": "0", "attempts": 1, "outcome": {"failed": "x"}}),
            ),
            plain.clone(),
        ),
    ];
    let queues = ["chorus.tasks", "chorus.subtasks", "chorus.results"];
    for queue in queues {
        for (_, body, properties) in &bodies {
            client.publish(queue, body, properties.clone()).await;
        }
    }
    let dead = client
        .drain("chorus.dead", queues.len() * bodies.len())
        .await;
    assert_eq!(
        dead.len(),
        queues.len() * bodies.len(),
        "everything is accounted for in chorus.dead"
    );
    for message in &dead {
        let reason = chorus_tests::header(&message.delivery.properties, "x-chorus-reason");
        assert!(
            reason.is_some_and(|r| !r.is_empty()),
            "every dead letter carries a reason"
        );
    }
    // Still serving, and small.
    let (reply_to, mut replies) = client.reply_queue().await;
    let run = tasks("s09", 2, 10, 0);
    submit(&client, &run, &reply_to).await;
    let collected = collect_replies(&mut replies, run.len(), DEADLINE).await;
    assert_clean(
        "after hostile input",
        &check(&env, &run, &collected.outcomes, collected.conflicting).await,
    );
    for service in services {
        assert!(env.is_running(service), "a service died of hostile input");
        let rss = env.rss_kib(service);
        note(&format!(
            "[hostile input] service #{service} RSS {rss} KiB after {} hostile messages",
            dead.len()
        ));
        assert!(
            rss < 200 * 1024,
            "service {service} holds {rss} KiB after hostile input"
        );
    }
}
