//! The stuck-task sweeper under real faults, on a private RabbitMQ + Redis (docs/reliability.md,
//! scenario sw1; issue 20, point 4): a subtask that crashes its worker on every delivery until
//! the broker dead-letters it at its delivery limit, and a subtask whose message is deleted from
//! its queue. The sweeper settles the first as failed with the broker's reason and publishes the
//! second again; both tasks get their outcomes, each subtask counted once, while a task whose
//! subtask merely waits in a queue no worker serves is left alone.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use chorus_tests::{
    fault::{check, note, Cluster, Planned, Replies},
    observe::{free_address, Scrape},
    RawClient, TestEnv, WAIT,
};
use futures::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicGetOptions},
    types::ShortString,
    BasicProperties,
};
use serde_json::{json, Value};

/// The sweeper's flags: a sweep every 250 ms, stuck after 5 s without progress. The stall must
/// outlast the crash loop below: while a worker holds the crashing subtask, its queue has no
/// ready message, and a repair then would publish it again (the documented limit of a subtask
/// running longer than `--stuck-after-ms`).
const SWEEP_FLAGS: [&str; 4] = ["--sweep-interval-ms", "250", "--stuck-after-ms", "5000"];

/// The delivery limit the scenario's policy sets on `chorus.subtasks` (the queue's own
/// `x-delivery-limit` is 20; the broker applies the lower): the broker dead-letters the
/// crashing subtask at its third return, after three worker crashes instead of twenty-one.
const DELIVERY_LIMIT: u32 = 2;

/// How long the scenario waits for the outcomes once the faults are in place (the stall of 5 s
/// plus a sweep interval, with room for a loaded machine).
const OUTCOME_WAIT: Duration = Duration::from_secs(60);

/// A task of the scenario: `planned` for the oracle, `extra` merged into the input sent.
fn request(planned: &Planned, extra: &Value) -> Vec<u8> {
    let mut request = planned.request();
    let input = request["input"].as_object_mut().unwrap();
    input.extend(extra.as_object().unwrap().clone());
    rmp_serde::to_vec_named(&request).unwrap()
}

fn planned(id: &str, parts: u32, poison: Vec<u32>) -> Planned {
    Planned {
        id: id.to_owned(),
        start: 0,
        end: 1000,
        parts,
        poison,
        delay_ms: 0,
        shape: Value::Null,
        options: Value::Null,
    }
}

async fn submit(client: &RawClient, body: &[u8], reply_to: &str) {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to));
    client.publish("chorus.tasks", body, properties).await;
}

/// Ready messages in `queue` (which exists).
async fn ready(client: &RawClient, queue: &str) -> u32 {
    client.ready_in(queue).await.unwrap()
}

/// Waits (bounded) until `queue` holds at least `count` ready messages.
async fn wait_for_ready(client: &RawClient, queue: &str, count: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = ready(client, queue).await;
        if now >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue} never held {count} ready messages (now {now})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes one message of `queue` for good: taken and acked, as a lost message would be.
async fn delete_one(client: &RawClient, queue: &str) -> Value {
    let message = client
        .channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{queue} held no message to delete"));
    message
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    chorus_tests::msgpack_to_json(&message.delivery.data)
}

/// Plays supervisor for a worker the subtask `range-sum.crash` aborts: restarts it each time it
/// dies until the broker has dead-lettered the subtask (a letter in `chorus.dead`). Returns how
/// many times it died (the last worker lives on when it was not the one the subtask took down).
async fn crash_until_dead_lettered(env: &mut TestEnv, client: &RawClient) -> usize {
    let args = ["--types", "default"];
    let crash = [("CHORUS_FAILPOINTS", "range-sum.crash=abort")];
    let mut worker = env.spawn_with("chorus-worker", &args, &crash);
    let mut crashes = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(client, "chorus.dead").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker never dead-lettered the crashing subtask ({crashes} crashes)"
        );
        if !env.is_running(worker) {
            crashes += 1;
            assert!(
                crashes <= 10,
                "the crashing subtask was never dead-lettered at the broker's delivery limit"
            );
            worker = env.spawn_with("chorus-worker", &args, &crash);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The broker dead-letters the subtask when the last crash closes the worker's connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while env.is_running(worker) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !env.is_running(worker) {
        crashes += 1;
    }
    crashes
}

#[tokio::test(flavor = "multi_thread")]
async fn sw1_a_subtask_dead_lettered_at_the_delivery_limit_fails_and_a_deleted_one_runs_again() {
    let cluster = Cluster::start("sw1");
    // A policy, as an operator would set one: the lower of it and the queue's own limit applies.
    cluster.rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        "low-delivery-limit",
        "^chorus\\.subtasks$",
        &format!("{{\"delivery-limit\": {DELIVERY_LIMIT}}}"),
    ]);
    let mut env = cluster.env("sw1").await;
    let client = env.client().await;
    env.spawn("chorus-orchestrator", &[]);
    let listen = free_address();
    let mut flags = SWEEP_FLAGS.to_vec();
    flags.extend(["--http-listen", &listen]);
    let synthesizer = env.spawn("chorus-synthesizer", &flags);
    for queue in ["chorus.tasks", "chorus.subtasks", "chorus.dead"] {
        client.wait_for_queue(queue).await;
    }
    let (reply_to, mut replies) = client.reply_queue().await;

    // `deleted`: two subtasks of the worker type `steady`, which no worker serves yet; one
    // message is deleted from the queue.
    let deleted = planned("deleted", 2, vec![]);
    submit(
        &client,
        &request(&deleted, &json!({"types": ["steady"]})),
        &reply_to,
    )
    .await;
    client.wait_for_queue("chorus.subtasks.steady").await;
    wait_for_ready(&client, "chorus.subtasks.steady", 2).await;
    let gone = delete_one(&client, "chorus.subtasks.steady").await;
    let deleted_at = Instant::now();
    env.spawn("chorus-worker", &["--types", "steady"]);
    // `backlog`: its one subtask waits in the queue of a type no worker serves.
    let backlog = planned("backlog", 1, vec![]);
    submit(
        &client,
        &request(&backlog, &json!({"types": ["idle"]})),
        &reply_to,
    )
    .await;
    // `dead`: slice 0 aborts its worker on every delivery (the oracle expects it failed, as a
    // poisoned slice); slice 1 runs on the steady worker.
    let dead = planned("dead", 2, vec![0]);
    let body = request(
        &dead,
        &json!({"poison": [], "crash": [0], "types": ["default", "steady"]}),
    );
    submit(&client, &body, &reply_to).await;
    let crash_loop = Instant::now();
    let crashes = crash_until_dead_lettered(&mut env, &client).await;
    let dead_lettered_at = Instant::now();
    let crash_loop = crash_loop.elapsed();

    let (collected, arrived) = outcomes_with_times(&mut replies, &env, synthesizer).await;
    let log = env.log_of(synthesizer);
    let report = check(
        &env,
        &[dead.clone(), deleted.clone()],
        &collected.outcomes,
        collected.conflicting,
    )
    .await;
    note(&format!(
        "[sw1 sweeper] {crashes} worker crashes until dead-lettered in {crash_loop:?}; subtask {} of `deleted` deleted; {report}",
        gone["subtask"]
    ));
    assert!(report.is_clean(), "{report}\n{log}");
    assert_eq!(
        report.duplicate_executions, 0,
        "a subtask ran twice:\n{log}"
    );
    assert_eq!(crashes, DELIVERY_LIMIT as usize + 1, "{log}");
    let outcome = &collected.outcomes["dead"];
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["errors"][0]["subtask"], "0", "{outcome}");
    let reason = outcome["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        reason.contains("dead-lettered by the broker at its delivery limit"),
        "{outcome}"
    );
    assert_eq!(collected.outcomes["deleted"]["status"], "succeeded");
    assert!(
        !collected.outcomes.contains_key("backlog"),
        "the backlog ran: {:?}",
        collected.outcomes["backlog"]
    );
    assert!(
        collected.counts.values().all(|&count| count == 1),
        "one outcome per submitter: {:?}",
        collected.counts
    );
    let scrape = Scrape::of(&listen).await;
    let repaired = |action| {
        scrape.value(
            "chorus_stuck_subtasks_repaired_total",
            &[("action", action)],
        )
    };
    assert_eq!(
        (repaired("failed"), repaired("republished")),
        (1.0, 1.0),
        "one subtask settled failed and one republished, nothing twice:\n{log}"
    );
    note(&format!(
        "[sw1 sweeper] `dead` failed {:.1} s after its dead letter, `deleted` succeeded {:.1} s after its deletion (stuck after 5 s, a sweep every 250 ms)",
        (arrived["dead"] - dead_lettered_at).as_secs_f64(),
        (arrived["deleted"] - deleted_at).as_secs_f64()
    ));
    wait_for_line(
        &env,
        synthesizer,
        "its subtask's queue has a backlog",
        "backlog",
    )
    .await;
}

/// Takes one reply into `collected`: its outcome (the first per task), its count, a conflict
/// when it differs from the first.
fn take(collected: &mut Replies, body: &[u8]) -> String {
    let outcome = chorus_tests::msgpack_to_json(body);
    let id = outcome["id"].as_str().unwrap().to_owned();
    *collected.counts.entry(id.clone()).or_insert(0) += 1;
    match collected.outcomes.get(&id) {
        Some(first) if *first != outcome => collected.conflicting += 1,
        Some(_) => {}
        None => {
            collected.outcomes.insert(id.clone(), outcome);
        }
    }
    id
}

/// The outcomes of `dead` and `deleted` with when each arrived, then any late reply for a
/// second more; fails after [`OUTCOME_WAIT`] with the synthesizer's log.
async fn outcomes_with_times(
    replies: &mut lapin::Consumer,
    env: &TestEnv,
    synthesizer: usize,
) -> (Replies, HashMap<String, Instant>) {
    let mut collected = Replies::default();
    let mut arrived = HashMap::new();
    let until = tokio::time::Instant::now() + OUTCOME_WAIT;
    while arrived.len() < 2 {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(until, replies.next()).await else {
            panic!(
                "the stuck tasks got no outcome within {OUTCOME_WAIT:?} (got {:?}):\n{}",
                arrived.keys().collect::<Vec<_>>(),
                env.log_of(synthesizer)
            );
        };
        let id = take(&mut collected, &delivery.data);
        arrived.entry(id).or_insert_with(Instant::now);
    }
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), replies.next()).await
    {
        take(&mut collected, &delivery.data);
    }
    (collected, arrived)
}

/// Waits (bounded) for a line of process `index`'s log holding `text` and the quoted `task`.
async fn wait_for_line(env: &TestEnv, index: usize, text: &str, task: &str) {
    let quoted = format!("\"{task}\"");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !env
        .log_of(index)
        .lines()
        .any(|line| line.contains(text) && line.contains(&quoted))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line {text:?} for task {task}:\n{}",
            env.log_of(index)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
