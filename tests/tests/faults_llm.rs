//! Fault scenarios of `llm` steps (docs/reliability.md, s21–s23) against a real provider,
//! llm-katan (an OpenAI-compatible test server from PyPI, echo backend): a worker SIGKILLed in
//! the middle of LLM calls, the provider answering 429 for a while, and the provider down for
//! longer than the retries. The echo backend's `usage` is deterministic (word counts), so the
//! tokens a task should count are known, and its `/metrics` count the calls that really
//! reached the provider.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chorus_tests::fault::collect_replies;
use chorus_tests::servers::{free_port, katan, katan_counts, katan_on, KatanCounts, Server};
use chorus_tests::{wait_for_running, RawClient, TestEnv};
use lapin::{types::ShortString, BasicProperties};
use serde_json::{json, Value};

/// The environment variable the provider's API key is read from (llm-katan wants a key).
const KEY_VAR: &str = "CHORUS_TEST_LLM_KEY";
const KEY: [(&str, &str); 1] = [(KEY_VAR, "test-key")];

/// Longest wait for an outcome.
const DEADLINE: Duration = Duration::from_secs(90);

/// Fast retries: the scenarios wait out several.
const RETRIES: [&str; 4] = [
    "--retry-base-delay-ms",
    "100",
    "--retry-max-delay-ms",
    "500",
];

/// A kinds file with kind `echo` (default planner: one subtask per item; an `llm` handler that
/// asks model `echo` to "Say <item>") on a provider at `port` with a 10 s timeout.
fn kinds_file(env: &TestEnv, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-{}", env.vhost));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[providers.katan]
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "{KEY_VAR}"
structured_output = "json_object"
timeout_ms = 10000

[models.echo]
provider = "katan"
model = "gpt-test"
temperature = 0
max_tokens = 64
price_per_million_input = 1.0
price_per_million_output = 2.0

[kinds.echo.handlers.default]
type = "llm"
model = "echo"
prompt = "Say {{{{ subtask.input }}}}"
"#
    );
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts an orchestrator and a synthesizer on `file`; a client waiting for outcomes.
async fn start_services(env: &mut TestEnv, file: &str) -> (RawClient, String, lapin::Consumer) {
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &KEY);
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &KEY);
    let client = env.client().await;
    let (reply_to, replies) = client.reply_queue().await;
    (client, reply_to, replies)
}

/// Starts a worker on `file` running `concurrency` subtasks at once, with fast retries.
fn spawn_worker(env: &mut TestEnv, file: &str, concurrency: &str) -> usize {
    let mut args = vec!["--kinds-file", file, "--concurrency", concurrency];
    args.extend_from_slice(&RETRIES);
    env.spawn_with("chorus-worker", &args, &KEY)
}

/// Publishes an `echo` task `id` over `items` with `options`, outcome to `reply_to`.
async fn submit(client: &RawClient, reply_to: &str, id: &str, items: &[String], options: Value) {
    let request = json!({"kind": "echo", "id": id, "input": {"items": items}, "options": options});
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/msgpack"))
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to));
    let body = rmp_serde::to_vec_named(&request).unwrap();
    client.publish("chorus.tasks", &body, properties).await;
}

/// The one outcome of task `id` (asserting no other reply came for it).
async fn outcome(replies: &mut lapin::Consumer, id: &str) -> Value {
    let collected = collect_replies(replies, 1, DEADLINE).await;
    assert_eq!(collected.conflicting, 0, "{:?}", collected.outcomes);
    assert_eq!(collected.counts.get(id), Some(&1), "{:?}", collected.counts);
    collected.outcomes[id].clone()
}

/// `count` items `first`, `first + 1`, ...: items of equal word count give equal echo usage.
fn items(first: u64, count: u64) -> Vec<String> {
    (first..first + count).map(|i| i.to_string()).collect()
}

/// The calls llm-katan answered since `before`.
async fn answered_since(server: &Server, before: KatanCounts) -> KatanCounts {
    let now = katan_counts(server.port).await;
    KatanCounts {
        requests: now.requests - before.requests,
        prompt_tokens: now.prompt_tokens - before.prompt_tokens,
        completion_tokens: now.completion_tokens - before.completion_tokens,
    }
}

/// Scenario 21's services, provider and outcomes.
struct Scene {
    env: TestEnv,
    client: RawClient,
    reply_to: String,
    replies: lapin::Consumer,
    provider: Server,
    file: String,
}

impl Scene {
    /// Runs `items` as task `id`; its outcome, and what the provider answered meanwhile.
    async fn run(&mut self, id: &str, items: &[String]) -> (Value, KatanCounts) {
        let before = katan_counts(self.provider.port).await;
        submit(&self.client, &self.reply_to, id, items, json!({})).await;
        let outcome = outcome(&mut self.replies, id).await;
        (outcome, answered_since(&self.provider, before).await)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn s21_a_worker_killed_mid_llm_calls_counts_every_subtask_s_tokens_once() {
    // 1 s per call, and room for every call at once (llm-katan serves one at a time by default).
    let provider = katan(&["--latency-ms", "1000", "--max-concurrent", "64"]).await;
    let mut env = TestEnv::new("s21").await;
    let file = kinds_file(&env, provider.port).to_str().unwrap().to_owned();
    let (client, reply_to, replies) = start_services(&mut env, &file).await;
    let mut scene = Scene {
        env,
        client,
        reply_to,
        replies,
        provider,
        file,
    };
    let victim = spawn_worker(&mut scene.env, &scene.file, &S21_CONCURRENCY.to_string());
    scene.client.wait_for_consumers("chorus.subtasks", 1).await;

    // Without faults: the task's stats count what the provider answered, call for call.
    let (base, answered) = scene.run("s21-base", &items(0, S21_N)).await;
    assert_eq!(base["status"], "succeeded", "{base}");
    let tokens = &base["stats"]["tokens"]["echo"];
    assert_eq!(tokens["calls"], S21_N, "{base}");
    assert_eq!(answered.requests, S21_N);
    assert_eq!(tokens["prompt"], answered.prompt_tokens, "{base}");
    assert_eq!(tokens["completion"], answered.completion_tokens, "{base}");

    let replacement = killed_mid_call(&mut scene, victim, &base).await;
    aborted_after_publishing(&mut scene, replacement, &base).await;
    // With the call cache (temperature 0) a call answered before a crash is answered from Redis
    // when its subtask runs again; a call still waiting for the provider at a SIGKILL is paid
    // again (the kill phase's bound), one that had its answer is not (the abort phase).
}

/// Subtasks per task of scenario 21, and each worker's concurrency (and prefetch).
const S21_N: u64 = 8;
const S21_CONCURRENCY: u64 = 4;

/// Scenario 21's SIGKILL: the same number of items of the same word count as the fault-free
/// `base` (so the same usage per call), other values (so a call cache could not answer them
/// from it); the `victim` is SIGKILLed while all its slots wait for the provider. Returns the
/// index of the worker started in its place.
async fn killed_mid_call(scene: &mut Scene, victim: usize, base: &Value) -> usize {
    let (n, concurrency) = (S21_N, S21_CONCURRENCY);
    let mut running = scene.client.events("subtask.running").await;
    let options = json!({"subtask_events": true});
    let before = katan_counts(scene.provider.port).await;
    submit(
        &scene.client,
        &scene.reply_to,
        "s21-kill",
        &items(1000, n),
        options,
    )
    .await;
    wait_for_running(&mut running, "s21-kill", concurrency as usize).await;
    // The calls leave as the handlers start; 300 ms into their 1 s they are at the provider.
    tokio::time::sleep(Duration::from_millis(300)).await;
    scene.env.kill(victim);
    let replacement = spawn_worker(&mut scene.env, &scene.file, &concurrency.to_string());
    let killed = outcome(&mut scene.replies, "s21-kill").await;
    let answered = answered_since(&scene.provider, before).await;
    eprintln!(
        "[s21 worker SIGKILL mid-LLM-calls] {n} subtasks, {concurrency} calls in flight at the kill: provider answered {} calls; stats {}",
        answered.requests, killed["stats"]["tokens"]
    );
    assert_eq!(killed["status"], "succeeded", "{killed}");
    let outputs = killed["output"].as_array().unwrap();
    for (output, item) in outputs.iter().zip(items(1000, n)) {
        let said = format!("User: Say {item}");
        assert!(output.as_str().unwrap().contains(&said), "{killed}");
    }
    // Every subtask's usage counted exactly once: the same totals (and cost) as without the
    // kill, although the provider answered more calls.
    assert_eq!(
        killed["stats"]["tokens"], base["stats"]["tokens"],
        "{killed}"
    );
    assert_eq!(killed["stats"]["cost"], base["stats"]["cost"], "{killed}");
    // What reached the provider: each subtask once, plus at most one more call per delivery
    // the victim held unacked (a prefetch of `concurrency`): the calls in flight at the kill,
    // which the provider finishes although nobody reads the answer, or a finished call whose
    // result was not yet acked. A redelivered subtask runs again from the start.
    assert!(
        (n..=n + concurrency).contains(&answered.requests),
        "{} calls for {n} subtasks with {concurrency} in flight at the kill",
        answered.requests
    );
    replacement
}

/// Scenario 21's abort: a worker that aborts right after publishing a result, before its ack
/// (the only worker, `replacement` stopped): that subtask runs again elsewhere and its result,
/// with its usage, reaches the synthesizer twice.
async fn aborted_after_publishing(scene: &mut Scene, replacement: usize, base: &Value) {
    let (n, concurrency) = (S21_N, S21_CONCURRENCY);
    let concurrency_text = concurrency.to_string();
    // A prefetch of its slots: the calls run at once and are all answered when the first
    // result is published; a worker holding more would start the next ones before the abort,
    // and the provider would see those again.
    let mut args = vec![
        "--kinds-file",
        &scene.file,
        "--concurrency",
        &concurrency_text,
        "--prefetch",
        &concurrency_text,
    ];
    args.extend_from_slice(&RETRIES);
    let abort = [
        KEY[0],
        ("CHORUS_FAILPOINTS", "worker.after-publish-result=abort"),
    ];
    let aborting = scene.env.spawn_with("chorus-worker", &args, &abort);
    scene.client.wait_for_consumers("chorus.subtasks", 2).await;
    scene.env.kill(replacement);
    let before = katan_counts(scene.provider.port).await;
    submit(
        &scene.client,
        &scene.reply_to,
        "s21-abort",
        &items(2000, n),
        json!({}),
    )
    .await;
    let deadline = Instant::now() + DEADLINE;
    while scene.env.is_running(aborting) {
        assert!(Instant::now() < deadline, "the failpoint never fired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spawn_worker(&mut scene.env, &scene.file, &concurrency_text);
    let aborted = outcome(&mut scene.replies, "s21-abort").await;
    let answered = answered_since(&scene.provider, before).await;
    let (_, status) = scene.env.cli(&["status", "s21-abort"]).await;
    let status: Value = serde_json::from_str(&status).unwrap();
    eprintln!(
        "[s21 worker abort after publishing a result] {n} subtasks: provider answered {} calls, {} duplicate results; stats {}",
        answered.requests, status["duplicate_results"], aborted["stats"]["tokens"]
    );
    assert_eq!(aborted["status"], "succeeded", "{aborted}");
    let duplicates = status["duplicate_results"].as_u64().unwrap();
    assert!(duplicates >= 1, "{status}");
    // Every subtask counted once, with its tokens: a call the aborted worker had its answer
    // for but whose result it never published is answered from the cache when the same
    // attempt runs again, and counted then as the paid call it was (not as a free hit).
    assert_eq!(
        aborted["stats"]["tokens"], base["stats"]["tokens"],
        "{aborted}"
    );
    assert_eq!(aborted["stats"]["cost"], base["stats"]["cost"], "{aborted}");
    // The call cache's promise (temperature 0): every call of the aborted worker had its
    // answer, stored in the cache, so the subtasks run again are answered from it and the
    // provider sees each call once.
    assert_eq!(
        answered.requests, n,
        "{} calls for {n} subtasks, a result published before the abort",
        answered.requests
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s22_a_provider_answering_429_for_a_while_fails_nothing_for_good() {
    // Two calls pass, then every request is answered 429 until the provider is restarted
    // without the limit on the same port.
    let mut provider = katan(&["--rate-limit-after", "2"]).await;
    let mut env = TestEnv::new("s22").await;
    let file = kinds_file(&env, provider.port);
    let file = file.to_str().unwrap();
    let (client, reply_to, mut replies) = start_services(&mut env, file).await;
    let worker = spawn_worker(&mut env, file, "4");
    client.wait_for_consumers("chorus.subtasks", 1).await;
    let n = 6_u64;
    // Enough attempts to outlast the throttling and the restart (a few seconds of 100-500 ms
    // waits); the point is that none runs out.
    let options = json!({"max_attempts": 40});
    submit(&client, &reply_to, "s22", &items(0, n), options).await;

    // The throttling lasts 2 s, and until every subtask that did not pass has met a 429 (the
    // step waits them out inside its attempt, so they show in the provider's log, not as failed
    // attempts).
    let (started, deadline) = (Instant::now(), Instant::now() + DEADLINE);
    while started.elapsed() < Duration::from_secs(2) || (provider.refused(429) as u64) < n - 2 {
        assert!(Instant::now() < deadline, "{}", env.log_of(worker));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = provider.refused(429);
    provider.kill();
    let provider = katan_on(provider.port, &[]).await;
    let outcome = outcome(&mut replies, "s22").await;
    let answered = katan_counts(provider.port).await;
    eprintln!(
        "[s22 provider answering 429 for 2 s, then restarted] {n} subtasks: {refused} requests refused with 429, {} retries; the restarted provider answered {} calls",
        outcome["stats"]["retries"],
        answered.requests
    );
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], n, "{outcome}");
    assert_eq!(outcome["stats"]["tokens"]["echo"]["calls"], n, "{outcome}");
    assert_eq!(answered.requests, n - 2, "{outcome}");
    // The 429s are waited out inside the attempts (tests/tests/llm_limits.rs checks that no
    // attempt is used for them); a call made while the provider restarts is refused a
    // connection and may use one.
}

#[tokio::test(flavor = "multi_thread")]
async fn s23_a_provider_down_longer_than_the_retries_settles_failed_or_partial() {
    let mut env = TestEnv::new("s23").await;
    // Nothing listens on the port: every call is refused.
    let down = free_port();
    let file = kinds_file(&env, down);
    let file = file.to_str().unwrap();
    let (client, reply_to, mut replies) = start_services(&mut env, file).await;
    spawn_worker(&mut env, file, "4");
    client.wait_for_consumers("chorus.subtasks", 1).await;
    let started = Instant::now();
    submit(&client, &reply_to, "s23-down", &items(0, 3), json!({})).await;
    let failed = outcome(&mut replies, "s23-down").await;
    let took = started.elapsed();
    assert_eq!(failed["status"], "failed", "{failed}");
    let errors = failed["errors"].to_string();
    assert!(errors.contains("Connection refused"), "{failed}");
    // The retry budget, and no more: three attempts each (the default), two waits of at most
    // 500 ms between them, so well within 10 s.
    assert_eq!(failed["stats"]["retries"], 3 * 2, "{failed}");
    assert!(took < Duration::from_secs(10), "{took:?}: {failed}");

    // A provider that starts answering 504 for good after two calls: under `continue` the
    // task is `partial`, its two answers kept, the others failed with the provider's error.
    let timing_out = katan(&["--timeout-after", "2"]).await;
    let mut env = TestEnv::new("s23b").await;
    let file = kinds_file(&env, timing_out.port);
    let file = file.to_str().unwrap();
    let (client, reply_to, mut replies) = start_services(&mut env, file).await;
    spawn_worker(&mut env, file, "4");
    client.wait_for_consumers("chorus.subtasks", 1).await;
    let started = Instant::now();
    let options = json!({"on_failure": "continue"});
    submit(&client, &reply_to, "s23-partial", &items(0, 5), options).await;
    let partial = outcome(&mut replies, "s23-partial").await;
    let took_partial = started.elapsed();
    eprintln!(
        "[s23 provider down] refused: failed in {took:?}; 504 after 2 calls: partial in {took_partial:?}"
    );
    assert_eq!(partial["status"], "partial", "{partial}");
    assert_eq!(partial["stats"]["succeeded"], 2, "{partial}");
    assert_eq!(partial["stats"]["failed"], 3, "{partial}");
    assert_eq!(partial["stats"]["tokens"]["echo"]["calls"], 2, "{partial}");
    assert!(partial["errors"].to_string().contains("504"), "{partial}");
    assert_eq!(partial["stats"]["retries"], 3 * 2, "{partial}");
    assert!(took_partial < Duration::from_secs(10), "{took_partial:?}");
    // Nothing is left behind: the task is over in Redis, nothing waits in a queue.
    let (code, status) = env.cli(&["status", "s23-partial"]).await;
    assert_eq!(code, 0, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "finished", "{status}");
    for counter in ["running", "pending"] {
        assert_eq!(status[counter], 0, "{status}");
    }
    assert_eq!(status["types"][0]["queued"], 0, "{status}");
}
