//! End-to-end tests of the spine: submit → orchestrate → work → synthesize → outcome, through
//! the real binaries, over real RabbitMQ and Redis. What the spine refuses (unknown kinds, bad
//! input, bad messages) is in `spine_rejects.rs`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chorus_tests::{
    header, msgpack_to_json, next_message,
    spine::{msgpack, request_properties, run_task, sum_of, JSON, MSGPACK},
    TestEnv,
};
use lapin::types::ShortString;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn range_sum_of_a_thousand_subtasks_is_exact() {
    let mut env = TestEnv::new("sum1000").await;
    env.start_system(2);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "sum-1000", "input": {"start": -5000, "end": 1_000_000, "parts": 1000}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["id"], "sum-1000");
    assert_eq!(outcome["output"]["sum"], sum_of(-5000, 1_000_000));
    assert_eq!(outcome["output"]["parts"], 1000);
    assert_eq!(outcome["stats"]["subtasks"], 1000);
    assert_eq!(outcome["stats"]["succeeded"], 1000);
    assert_eq!(outcome["stats"]["failed"], 0);
    assert_eq!(outcome["errors"], json!([]));

    // The outcome is kept in Redis with a TTL, and every key of the task shares its hash tag
    // (beside it, only the services' announcements and the index of recent tasks, under its own
    // hash tag: keys of the deployment).
    let mut redis = env.redis().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("chorus:{sum-1000}:outcome")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|k| k.starts_with("chorus:{sum-1000}:")
            || k == chorus_shared::store::SERVICES_KEY
            || k == chorus_shared::admin::tasks::INDEX_KEY
            || k == chorus_shared::admin::tasks::ENTRIES_KEY),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_take_freshly_published_subtasks_as_live_without_asking_redis() {
    let mut env = TestEnv::new("fresh").await;
    env.start_system(2);
    let monitor = env.monitor_redis("fresh-").await;
    let tasks = 20;
    for n in 0..tasks {
        let outcome = run_task(
            &env,
            json!({"kind": "range-sum", "id": format!("fresh-{n}"), "input": {"start": 0, "end": 30, "parts": 3}}),
        )
        .await;
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        assert_eq!(outcome["output"]["sum"], sum_of(0, 30));
    }
    // Without the publishers' stamp every task costs a lookup in each worker it reaches (20 at
    // the least). The workers' half-second poll of tasks with handlers running may still catch
    // a few, more on a loaded machine; the bound sits halfway.
    let lookups: Vec<String> = monitor
        .lines()
        .into_iter()
        .filter(|line| {
            line.contains(r#""EXISTS" "chorus:{fresh-"#) && line.ends_with(r#":outcome""#)
        })
        .collect();
    assert!(
        lookups.len() < tasks / 2,
        "{} liveness lookups for {tasks} freshly published tasks: {lookups:?}",
        lookups.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_attempts_are_retried_to_success() {
    let mut env = TestEnv::new("retries").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 1000, "parts": 10, "fail_attempts": 2},
               "options": {"max_attempts": 3}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 1000));
    assert_eq!(outcome["stats"]["retries"], 20);
}

/// Bucket bounds of the classic delay queues an earlier version declared.
const EARLIER_BUCKETS_MS: [u64; 11] = [
    100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 102_400,
];

#[tokio::test(flavor = "multi_thread")]
async fn retries_skip_the_classic_delay_queues_an_earlier_version_left_behind() {
    use lapin::{
        options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable, LongString},
        ExchangeKind,
    };
    let mut env = TestEnv::new("oldbuckets").await;
    let client = env.client().await;
    let text = |value: &str| AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()));
    client
        .channel
        .exchange_declare(
            ShortString::from("chorus.delay"),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Bound as the earlier version bound its buckets, but dead-lettering into one queue of
    // the test's, where whatever was routed to them ends up to be counted.
    let routed_to_earlier_buckets = "routed-to-earlier-buckets";
    client
        .channel
        .queue_declare(
            ShortString::from(routed_to_earlier_buckets),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for bucket in EARLIER_BUCKETS_MS {
        let queue = format!("chorus.delayed.{bucket}");
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            text(routed_to_earlier_buckets),
        );
        client
            .channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .unwrap();
        let mut binding = FieldTable::default();
        binding.insert(ShortString::from("x-match"), text("all"));
        binding.insert(ShortString::from("chorus-delay"), text(&bucket.to_string()));
        client
            .channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from("chorus.delay"),
                ShortString::from(""),
                QueueBindOptions::default(),
                binding,
            )
            .await
            .unwrap();
    }
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 1000, "parts": 10, "fail_attempts": 2},
               "options": {"max_attempts": 3}}),
    )
    .await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 20);
    // Every retry expired from its bucket before its attempt ran, so copies routed to an
    // earlier version's buckets, if any, have reached the counting queue by now.
    let routed = client.ready_in(routed_to_earlier_buckets).await.unwrap();
    assert_eq!(
        routed, 0,
        "retries were routed to an earlier version's delay queues too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_fails_the_task_under_the_fail_policy() {
    let mut env = TestEnv::new("poisonfail").await;
    env.start_system(1);
    let client = env.client().await;
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "id": "poison-fail", "input": {"start": 0, "end": 100, "parts": 5, "poison": [3]},
               "options": {"max_attempts": 2, "on_failure": "fail"}}),
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["output"], Value::Null);
    assert_eq!(outcome["errors"][0]["subtask"], "3");
    assert!(outcome["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("poisoned"));
    assert_eq!(outcome["stats"]["failed"], 1);
    assert_eq!(outcome["stats"]["succeeded"], 4);
    assert_eq!(outcome["stats"]["retries"], 1);

    // The failed subtask's last attempt is in chorus.dead, with the reason.
    let dead = client.drain("chorus.dead", 1).await;
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0].delivery.properties, "x-chorus-reason").unwrap();
    assert!(
        reason.contains("failed after 2 attempt(s)") && reason.contains("poisoned"),
        "{reason}"
    );
    assert_eq!(
        header(&dead[0].delivery.properties, "x-chorus-task").as_deref(),
        Some("poison-fail")
    );
    assert_eq!(
        header(&dead[0].delivery.properties, "x-chorus-subtask").as_deref(),
        Some("3")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_gives_a_partial_result_under_the_continue_policy() {
    let mut env = TestEnv::new("poisoncont").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 100, "parts": 4, "poison": [1, 2]},
               "options": {"max_attempts": 1, "on_failure": "continue"}}),
    )
    .await;
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 25) + sum_of(75, 100));
    assert_eq!(outcome["output"]["parts"], 2);
    let failed: Vec<&str> = outcome["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subtask"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["1", "2"]);
    assert_eq!(outcome["stats"]["retries"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_attempt_times_out() {
    let mut env = TestEnv::new("timeout").await;
    env.start_system(1);
    let outcome = run_task(
        &env,
        json!({"kind": "range-sum", "input": {"start": 0, "end": 10, "parts": 2, "delay_ms": 5000},
               "options": {"max_attempts": 2, "timeout_ms": 200}}),
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["stats"]["failed"], 2);
    assert_eq!(outcome["stats"]["retries"], 2);
    assert_eq!(outcome["errors"][0]["message"], "timed out after 200 ms");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_client_gets_its_outcome_through_reply_to_and_the_event_is_announced() {
    let mut env = TestEnv::new("jsonclient").await;
    env.start_system(1);
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let mut events = client.events("task.*").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    // No id in the body: the message_id property names the task.
    let body = br#"{"kind": "range-sum", "input": {"start": 1, "end": 101, "parts": 3}}"#;
    let properties = request_properties(JSON, &reply_to, "my-correlation")
        .with_message_id(ShortString::from("json-task-7"));
    client.publish("chorus.tasks", body, properties).await;
    let reply = next_message(&mut replies).await;
    assert_eq!(
        reply
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str),
        Some(JSON)
    );
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str),
        Some("my-correlation")
    );
    let outcome: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(outcome["id"], "json-task-7");
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(outcome["output"]["sum"], 5050);
    let event = next_message(&mut events).await;
    assert_eq!(event.routing_key.as_str(), "task.succeeded");
    assert_eq!(msgpack_to_json(&event.data), outcome);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_submitted_twice_runs_once_and_both_submitters_get_the_outcome() {
    let mut env = TestEnv::new("duplicate").await;
    env.start_system(2);
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let mut events = client.events("task.#").await;
    let (first_queue, mut first) = client.reply_queue().await;
    let (second_queue, mut second) = client.reply_queue().await;
    let request = json!({"kind": "range-sum", "id": "twice", "input": {"start": 0, "end": 200, "parts": 20, "delay_ms": 50}});
    client
        .publish(
            "chorus.tasks",
            &msgpack(&request),
            request_properties(MSGPACK, &first_queue, "a"),
        )
        .await;
    client
        .publish(
            "chorus.tasks",
            &msgpack(&request),
            request_properties(MSGPACK, &second_queue, "b"),
        )
        .await;
    let first_outcome = msgpack_to_json(&next_message(&mut first).await.data);
    let second_outcome = msgpack_to_json(&next_message(&mut second).await.data);
    assert_eq!(first_outcome["status"], "succeeded", "{first_outcome}");
    assert_eq!(first_outcome, second_outcome);
    assert_eq!(first_outcome["stats"]["subtasks"], 20);

    // A third submission after the end gets the stored outcome at once.
    let (third_queue, mut third) = client.reply_queue().await;
    client
        .publish(
            "chorus.tasks",
            &msgpack(&request),
            request_properties(MSGPACK, &third_queue, "c"),
        )
        .await;
    assert_eq!(
        msgpack_to_json(&next_message(&mut third).await.data),
        first_outcome
    );

    // It ran once: exactly one outcome event, and each reply queue got exactly one outcome.
    next_message(&mut events).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for consumer in [&mut events, &mut first, &mut second, &mut third] {
        let extra = tokio::time::timeout(
            Duration::from_millis(200),
            futures::StreamExt::next(consumer),
        )
        .await;
        assert!(extra.is_err(), "unexpected extra message");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_submits_waits_and_reports() {
    let mut env = TestEnv::new("cli").await;
    env.start_system(1);
    let input = r#"{"start": 0, "end": 10000, "parts": 50}"#;
    let (code, stdout) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--input",
            input,
            "--id",
            "cli-1",
            "--wait",
        ])
        .await;
    assert_eq!(code, 0, "{stdout}");
    let outcome: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["output"]["sum"], sum_of(0, 10_000));

    let (code, stdout) = env.cli(&["status", "cli-1"]).await;
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["state"], "finished");
    assert_eq!(status["settled"], 50);
    assert_eq!(status["status"], "succeeded");

    let (code, stdout) = env.cli(&["result", "cli-1"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), outcome);

    let poisoned = r#"{"start": 0, "end": 10, "parts": 2, "poison": [0]}"#;
    let (code, _) = env
        .cli(&[
            "submit",
            "--kind",
            "range-sum",
            "--input",
            poisoned,
            "--max-attempts",
            "1",
            "--wait",
        ])
        .await;
    assert_eq!(code, 1, "failed tasks exit 1");
    let (code, _) = env
        .cli(&["submit", "--kind", "nope", "--input", "{}", "--wait"])
        .await;
    assert_eq!(code, 3, "rejected tasks exit 3");
    let (code, _) = env.cli(&["result", "never-submitted"]).await;
    assert_eq!(code, 4);
    let (code, _) = env
        .cli(&["submit", "--kind", "range-sum", "--input", "{not json"])
        .await;
    assert_eq!(code, 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn wordfreq_counts_words_across_files_and_chunks() {
    let mut env = TestEnv::new("wordfreq").await;
    let dir = std::env::temp_dir().join(format!("chorus-wf-{}", env.vhost));
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("a.txt"), "Apple banana apple\ncherry").unwrap();
    // Over 256 KiB, so it spans several chunks.
    std::fs::write(dir.join("nested/b.txt"), "banana apple ".repeat(40_000)).unwrap();
    // wordfreq reads only under the orchestrator's file roots.
    env.spawn(
        "chorus-orchestrator",
        &["--file-root", &dir.to_string_lossy()],
    );
    env.spawn("chorus-worker", &[]);
    env.spawn("chorus-worker", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let input = json!({"paths": [dir.to_string_lossy()], "top": 3});
    let outcome = run_task(&env, json!({"kind": "wordfreq", "input": input})).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(
        outcome["output"]["top"],
        json!([{"word": "apple", "count": 40_002}, {"word": "banana", "count": 40_001}, {"word": "cherry", "count": 1}])
    );
    assert_eq!(outcome["output"]["total_words"], 80_004);
    assert!(
        outcome["stats"]["subtasks"].as_u64().unwrap() >= 2,
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_killed_while_publishing_resumes_after_restart() {
    let mut env = TestEnv::new("orchrestart").await;
    let orchestrator = env.spawn("chorus-orchestrator", &["--publish-batch", "50"]);
    env.spawn("chorus-worker", &["--concurrency", "64"]);
    env.spawn("chorus-synthesizer", &[]);
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    let parts = 20_000;
    let request = json!({"kind": "range-sum", "id": "big", "input": {"start": 0, "end": 10_000_000, "parts": parts}});
    client
        .publish(
            "chorus.tasks",
            &msgpack(&request),
            request_properties(MSGPACK, &reply_to, "big"),
        )
        .await;

    // Kill it once part of the plan is confirmed, but not all of it.
    let mut redis = env.redis().await;
    let deadline = tokio::time::Instant::now() + chorus_tests::WAIT;
    loop {
        let published: Option<u64> = redis::cmd("HGET")
            .arg("chorus:{big}:task")
            .arg("published")
            .query_async(&mut redis)
            .await
            .unwrap();
        if published.is_some_and(|p| p > 0) {
            assert!(
                published.unwrap() < parts,
                "the whole plan went out before the kill; make it bigger"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.kill(orchestrator);
    env.spawn("chorus-orchestrator", &[]);

    let outcome = msgpack_to_json(&next_message(&mut replies).await.data);
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["output"]["sum"], sum_of(0, 10_000_000));
    assert_eq!(outcome["stats"]["subtasks"], parts);
    assert_eq!(outcome["output"]["parts"], parts);
}
