//! Untrusted input end to end (issue 16, points 4 and 6): `wordfreq` reads only under the
//! orchestrator's `--file-root`s, and text a submitter sent (a kind name) reaches the log, the
//! dead letter's `x-chorus-reason` and the outcome escaped and bounded. Real binaries, real
//! RabbitMQ and Redis.
#![allow(clippy::unwrap_used)]

use std::{os::unix::fs::symlink, path::PathBuf, time::Duration};

use chorus_tests::{header, msgpack_to_json, next_message, TestEnv, WAIT};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

/// Submits `requests` (MessagePack) with one private reply queue; returns the outcomes by
/// correlation id, in the order of `requests`.
async fn run_tasks(env: &TestEnv, requests: &[Value]) -> Vec<Value> {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    for (n, request) in requests.iter().enumerate() {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/msgpack"))
            .with_reply_to(ShortString::from(reply_to.as_str()))
            .with_correlation_id(ShortString::from(n.to_string()));
        let body = rmp_serde::to_vec_named(request).unwrap();
        client.publish("chorus.tasks", &body, properties).await;
    }
    let mut outcomes = vec![Value::Null; requests.len()];
    for _ in requests {
        let reply = next_message(&mut replies).await;
        let n: usize = reply
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        outcomes[n] = msgpack_to_json(&reply.data);
    }
    outcomes
}

/// A tree for one test: `root/inside.txt`, `outside/secret.txt`, and in the root a symlink to
/// the secret file and one to the outside directory. Removed when dropped.
struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Self {
        let base = std::env::temp_dir().join(format!("chorus-{name}"));
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(root.join("inside.txt"), "inside inside words").unwrap();
        std::fs::write(base.join("outside/secret.txt"), "topsecret").unwrap();
        symlink(base.join("outside/secret.txt"), root.join("to-secret")).unwrap();
        symlink(base.join("outside"), root.join("to-outside")).unwrap();
        Self { base }
    }

    fn path(&self, relative: &str) -> String {
        self.base.join(relative).to_string_lossy().into_owned()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        drop(std::fs::remove_dir_all(&self.base));
    }
}

fn wordfreq(path: &str) -> Value {
    json!({"kind": "wordfreq", "input": {"paths": [path], "top": 100}})
}

#[tokio::test(flavor = "multi_thread")]
async fn wordfreq_reads_only_under_the_file_roots() {
    let mut env = TestEnv::new("fileroots").await;
    let tree = Tree::new(&env.vhost);
    env.spawn("chorus-orchestrator", &["--file-root", &tree.path("root")]);
    env.spawn("chorus-worker", &[]);
    env.spawn("chorus-synthesizer", &[]);
    let outside = [
        "/etc/passwd".to_owned(),
        tree.path("root/../outside/secret.txt"),
        tree.path("root/../.."),
        tree.path("root/to-secret"),
        tree.path("root/to-outside/secret.txt"),
    ];
    let mut requests: Vec<Value> = outside.iter().map(|path| wordfreq(path)).collect();
    requests.push(wordfreq(&tree.path("root/inside.txt")));
    requests.push(wordfreq(&tree.path("root")));
    let outcomes = run_tasks(&env, &requests).await;
    for (path, outcome) in outside.iter().zip(&outcomes) {
        assert_eq!(outcome["status"], "rejected", "{path}: {outcome}");
        let message = outcome["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("is outside the allowed file roots")
                || message.contains("must not contain `..` components"),
            "{path}: {message}"
        );
        assert!(!outcome.to_string().contains("topsecret"), "{outcome}");
        assert!(!outcome.to_string().contains("root:x:0"), "{outcome}");
    }
    for outcome in &outcomes[outside.len()..] {
        assert_eq!(outcome["status"], "succeeded", "{outcome}");
        assert_eq!(
            outcome["output"]["top"],
            json!([{"word": "inside", "count": 2}, {"word": "words", "count": 1}])
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_file_root_wordfreq_reads_nothing() {
    let mut env = TestEnv::new("norootfiles").await;
    let tree = Tree::new(&env.vhost);
    env.start_system(1);
    let outcomes = run_tasks(&env, &[wordfreq(&tree.path("root/inside.txt"))]).await;
    assert_eq!(outcomes[0]["status"], "rejected", "{}", outcomes[0]);
    let message = outcomes[0]["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("no file roots (--file-root)"), "{message}");
}

/// Waits (bounded) until child `index`'s log holds `count` lines containing `needle`.
async fn wait_for_log(env: &TestEnv, index: usize, needle: &str, count: usize) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = env.log_of(index);
        if log.matches(needle).count() >= count {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kind_name_from_a_message_is_bounded_and_escaped_everywhere() {
    let mut env = TestEnv::new("usertext").await;
    let orchestrator = env.spawn("chorus-orchestrator", &[]);
    let client = env.client().await;
    let long = "k".repeat(10_000);
    let forged = "evil\nFORGED-LINE \u{1b}[31mred\u{202e}";
    let requests = [
        json!({"kind": long, "id": "long-kind", "input": null}),
        json!({"kind": forged, "id": "forged-kind", "input": null}),
    ];
    let outcomes = run_tasks(&env, &requests).await;

    // The outcomes' errors. A kind name over 256 bytes is refused as it arrives, by its
    // length, before the task is claimed: nothing of it reaches Redis.
    let long_message = outcomes[0]["errors"][0]["message"].as_str().unwrap();
    assert_eq!(outcomes[0]["status"], "rejected");
    assert_eq!(
        long_message, "kind is 10000 bytes long; the limit is 256",
        "{long_message}"
    );
    let stored: Vec<String> = redis::cmd("KEYS")
        .arg("chorus:{long-kind}:*")
        .query_async(&mut env.redis().await)
        .await
        .unwrap();
    assert!(stored.is_empty(), "{stored:?}");
    let forged_message = outcomes[1]["errors"][0]["message"].as_str().unwrap();
    assert!(
        forged_message.contains(r#""evil\nFORGED-LINE \u{1b}[31mred\u{202e}""#),
        "{forged_message}"
    );
    assert!(!forged_message.contains(['\n', '\u{1b}', '\u{202e}']));

    // The dead letters' reasons.
    let dead = client.drain("chorus.dead", 2).await;
    for letter in &dead {
        let reason = header(&letter.delivery.properties, "x-chorus-reason").unwrap();
        assert!(reason.len() <= 2048, "{} bytes", reason.len());
        assert!(!reason.contains(&"k".repeat(300)), "{reason}");
        assert!(!reason.contains(['\n', '\u{1b}', '\u{202e}']), "{reason:?}");
    }
    assert!(dead.iter().any(|letter| {
        header(&letter.delivery.properties, "x-chorus-reason")
            .unwrap()
            .contains(r"evil\nFORGED-LINE")
    }));

    // The orchestrator's log: no line is the forged one, none carries the whole name.
    let log = wait_for_log(&env, orchestrator, "dead-lettered", 2).await;
    assert!(log.contains(r"evil\nFORGED-LINE"), "{log}");
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED-LINE")),
        "{log}"
    );
    assert!(!log.contains(['\u{1b}', '\u{202e}']), "{log:?}");
    assert!(!log.contains(&"k".repeat(300)), "a whole name in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_of_a_refused_result_in_a_batch_reach_the_log_bounded_and_escaped() {
    use chorus_shared::protocol::{ResultBatch, ResultMessage, SubtaskOutcome, RESULT_BATCH_TYPE};

    let mut env = TestEnv::new("batchtext").await;
    let synthesizer = env.spawn("chorus-synthesizer", &[]);
    let client = env.client().await;
    client.wait_for_queue("chorus.results").await;
    let forged = format!("x\nFORGED-LINE \u{1b}[31m{}", "t".repeat(10_000));
    let result = |task: &str, subtask: &str| ResultMessage {
        task: task.to_owned(),
        subtask: subtask.to_owned(),
        attempts: 1,
        outcome: SubtaskOutcome::Failed("boom".to_owned()),
        spawned: Vec::new(),
        round: 0,
        usage: Vec::new(),
    };
    // A task id that fails validation, and a valid one with a forged subtask id.
    let batch = ResultBatch {
        results: vec![result(&forged, "0"), result("no-such-task", &forged)],
    };
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_type(ShortString::from(RESULT_BATCH_TYPE));
    let body = rmp_serde::to_vec_named(&batch).unwrap();
    client.publish("chorus.results", &body, properties).await;

    let log = wait_for_log(&env, synthesizer, "dead-lettered to chorus.dead", 2).await;
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED-LINE")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(!log.contains(&"t".repeat(300)), "a whole id in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_to_naming_a_chorus_queue_is_refused_and_gets_nothing() {
    let mut env = TestEnv::new("replyto").await;
    env.spawn("chorus-orchestrator", &[]);
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    // Refused twice over: for its reply_to, and for its unknown kind, whose `rejected` outcome
    // would otherwise be published into chorus.results.
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_reply_to(ShortString::from("chorus.results"));
    let body = br#"{"kind": "no-such-kind", "id": "reply-to-results", "input": null}"#;
    client.publish("chorus.tasks", body, properties).await;

    let dead = client.drain("chorus.dead", 1).await;
    let reason = header(&dead[0].delivery.properties, "x-chorus-reason").unwrap();
    assert!(
        reason.contains(r#"reply_to "chorus.results" names one of Chorus's own queues"#),
        "{reason}"
    );
    let replies = client.drain("chorus.results", 0).await;
    assert!(
        replies.is_empty(),
        "{} messages in chorus.results",
        replies.len()
    );
}
