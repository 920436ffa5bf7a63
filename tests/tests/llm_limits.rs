//! Limits of `llm` steps' models shared by every worker (docs/llm.md#limits), against real
//! servers: llm-katan (a test server from PyPI, installed by deploy/llm-katan.sh; its log
//! names the status of every request it refused) and the SCRIPTED test server
//! tests/fixtures/llm/scripted_server.py (its `[throttle]` marker answers 429, then 503, with
//! `Retry-After: 1`, before answering), through the real services.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chorus_shared::steps::llm::limits::{Field, MAX_THROTTLED_TRIES};
use chorus_shared::steps::llm::{Catalog, StoreSlot};
use chorus_shared::steps::{
    CallLimits, LlmOutput, LlmSpec, ModelSpec, ProviderSpec, Step, StepError, StructuredOutput,
};
use chorus_shared::store::Store;
use chorus_tests::servers::{katan, katan_counts, katan_requests, katan_step, scripted};
use chorus_tests::{repo_dir, TestEnv};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The environment variable the providers read their API key from (llm-katan wants one).
const KEY_VAR: &str = "CHORUS_TEST_LLM_KEY";

/// A kinds file with models `echo` (with `limits`) and `open` (none) at `base_url`, and a kind
/// of each whose handler sends `prompt`.
fn kinds_file(base_url: &str, limits: &str, prompt: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-lim-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[providers.p]
base_url = "{base_url}"
api_key_env = "{KEY_VAR}"
structured_output = "json_object"

[models.echo]
provider = "p"
model = "gpt-test"
{limits}

[models.open]
provider = "p"
model = "gpt-test"

[kinds.echo.handlers.default]
type = "llm"
model = "echo"
prompt = "{prompt}"

[kinds.open.handlers.default]
type = "llm"
model = "open"
prompt = "{prompt}"
"#
    );
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An orchestrator, `workers` workers and a synthesizer on the kinds file `path`.
fn start(env: &mut TestEnv, path: &Path, workers: usize) {
    let file = path.to_str().unwrap();
    let vars = [(KEY_VAR, "test-key")];
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &vars);
    for _ in 0..workers {
        start_worker(env, path);
    }
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &vars);
}

fn start_worker(env: &mut TestEnv, path: &Path) {
    let args = [
        "--kinds-file",
        path.to_str().unwrap(),
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
    ];
    env.spawn_with("chorus-worker", &args, &[(KEY_VAR, "test-key")]);
}

/// Submits a task of `kind` with `items` items and waits: exit code, outcome, time taken.
async fn run(env: &TestEnv, kind: &str, items: usize) -> (i32, Value, Duration) {
    run_with(env, kind, items, &[]).await
}

/// [`run`] with `extra` flags of `chorus submit`.
async fn run_with(
    env: &TestEnv,
    kind: &str,
    items: usize,
    extra: &[&str],
) -> (i32, Value, Duration) {
    let items: Vec<String> = (0..items).map(|i| format!("w{i}")).collect();
    let input = json!({ "items": items }).to_string();
    let started = Instant::now();
    let mut args = vec!["submit", "--kind", kind, "--input", &input, "--wait"];
    args.extend_from_slice(extra);
    let (code, stdout) = env.cli(&args).await;
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
    (code, outcome, started.elapsed())
}

/// `chorus limits ...`: exit code and the JSON it printed (Null when none).
async fn limits(env: &TestEnv, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["limits"];
    all.extend_from_slice(args);
    let (code, stdout) = env.cli(&all).await;
    (code, serde_json::from_str(&stdout).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_minute_hold_across_two_workers() {
    let server = katan(&[]).await;
    let mut env = TestEnv::new("llmrpm").await;
    // 120 a minute is one call every 500 ms: 12 calls take at least 11 × 500 ms, whichever
    // of the two workers makes them (unlimited, llm-katan answers all 12 in well under 1 s).
    let path = kinds_file(
        &format!("http://127.0.0.1:{}/v1", server.port),
        "requests_per_minute = 120",
        "Say {{ subtask.input }}",
    );
    start(&mut env, &path, 2);
    let (code, outcome, took) = run(&env, "echo", 12).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 12, "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    assert!(took >= Duration::from_millis(5_300), "took {took:?}");
    let (code, shown) = limits(&env, &["show"]).await;
    assert_eq!(code, 0);
    assert_eq!(shown["echo"]["requests_per_minute"], 120, "{shown}");
    assert_eq!(shown["echo"]["calls_in_flight"], 0, "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_keeps_two_workers_under_the_providers_cap() {
    // llm-katan answers 503 to a call beyond 2 at once; each call takes 300 ms.
    let server = katan(&["--max-inflight", "2", "--latency-ms", "300"]).await;
    let mut env = TestEnv::new("llminflight").await;
    let path = kinds_file(
        &format!("http://127.0.0.1:{}/v1", server.port),
        "max_in_flight = 2",
        "Say {{ subtask.input }}",
    );
    start(&mut env, &path, 2);
    let (code, outcome, _) = run(&env, "echo", 10).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 10, "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    assert_eq!(
        server.refused(503),
        0,
        "llm-katan refused calls over its cap"
    );
    // The same calls on the model without the cap do go over it: the check above can fail.
    let (_, outcome, _) = run(&env, "open", 10).await;
    assert!(server.refused(503) > 0, "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_is_waited_out_without_using_attempts() {
    // Each call is answered 429, then 503, both with `Retry-After: 1`, then served.
    let server = scripted();
    let mut env = TestEnv::new("llmthrottle").await;
    let path = kinds_file(
        &format!("http://127.0.0.1:{}/v1", server.port),
        "",
        "[throttle] {{ subtask.input }}",
    );
    start(&mut env, &path, 1);
    let (code, outcome, took) = run(&env, "echo", 3).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 3, "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    // Both waits were the provider's `Retry-After`.
    assert!(took >= Duration::from_millis(1_900), "took {took:?}");
    let url = format!("http://127.0.0.1:{}/requests", server.port);
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let received: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(received.len(), 9, "three tries of each of the three calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_keeps_throttling_fails_the_attempt_after_a_bounded_number_of_tries() {
    std::env::set_var(KEY_VAR, "test-key");
    let server = katan(&["--rate-limit-after", "1"]).await;
    let model = ModelSpec {
        model: "gpt-test".to_owned(),
        max_tokens: Some(64),
        ..Default::default()
    };
    let step = katan_step(server.port, 30_000, model);
    let request = json!({"step": "handle", "subtask": {"id": "0", "input": {"word": "hi"}}});
    let limits = CallLimits {
        timeout: Duration::from_secs(30),
        max_answer_bytes: 1 << 20,
    };
    let (body, cancel) = (request.to_string(), CancellationToken::new());
    let call = || step.call(body.as_bytes(), limits, &cancel);
    call().await.unwrap();
    // Every later request is refused with 429 (no Retry-After): tried with a backoff, up to
    // the bound, then the usual retryable failure.
    match call().await {
        Err(StepError::Retryable { message, .. }) => assert!(message.contains("429"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.refused(429), MAX_THROTTLED_TRIES);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admins_limits_override_the_files_and_hold_without_restarts() {
    let server = katan(&[]).await;
    let mut env = TestEnv::new("llmadmin").await;
    let path = kinds_file(
        &format!("http://127.0.0.1:{}/v1", server.port),
        "requests_per_minute = 6000\nmax_in_flight = 50",
        "Say {{ subtask.input }}",
    );
    start(&mut env, &path, 1);
    // The file's limits are written to Redis by the first call.
    let (code, outcome, _) = run(&env, "echo", 2).await;
    assert_eq!(code, 0, "{outcome}");
    let (_, shown) = limits(&env, &["show"]).await;
    assert_eq!(shown["echo"]["requests_per_minute"], 6000, "{shown}");
    assert_eq!(shown["echo"]["max_in_flight"], 50, "{shown}");

    // The running worker enforces the admin's 120 a minute from its next call on: 5 calls
    // take at least 4 × 500 ms.
    let (code, shown) = limits(&env, &["set", "echo", "--rpm", "120"]).await;
    assert_eq!(code, 0);
    assert_eq!(shown["echo"]["requests_per_minute"], 120, "{shown}");
    let (code, outcome, took) = run(&env, "echo", 5).await;
    assert_eq!(code, 0, "{outcome}");
    assert!(took >= Duration::from_millis(1_800), "took {took:?}");

    // A worker started now with the file's 6000, alone, leaves the admin's value alone.
    start_worker(&mut env, &path);
    env.terminate(1, Duration::from_secs(15)).unwrap();
    let (code, outcome, took) = run(&env, "echo", 5).await;
    assert_eq!(code, 0, "{outcome}");
    assert!(took >= Duration::from_millis(1_800), "took {took:?}");
    let (_, shown) = limits(&env, &["show"]).await;
    assert_eq!(shown["echo"]["requests_per_minute"], 120, "{shown}");

    // Clearing removes it; out-of-range values and an empty `set` are usage errors.
    let (code, shown) = limits(&env, &["clear", "echo", "--rpm"]).await;
    assert_eq!(code, 0);
    assert!(
        shown["echo"].get("requests_per_minute").is_none(),
        "{shown}"
    );
    assert_eq!(shown["echo"]["max_in_flight"], 50, "{shown}");
    assert_eq!(limits(&env, &["set", "echo"]).await.0, 64);
    assert_eq!(
        limits(&env, &["set", "echo", "--in-flight", "2000000"])
            .await
            .0,
        64
    );
    assert_eq!(limits(&env, &["set", "a}b", "--rpm", "1"]).await.0, 64);
}

/// The Redis rules of `role` in deploy/acl/redis.acl.
fn acl_rules(role: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_dir().join("deploy/acl/redis.acl")).unwrap();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(role))
        .unwrap_or_else(|| panic!("no {role} in redis.acl"));
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// A store connected as a Redis user of `role`'s rules, created for this test.
async fn store_as(env: &TestEnv, role: &str) -> Store {
    let user = format!("{}-{role}", env.vhost);
    let mut admin = env.redis().await;
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(">pw");
    for rule in acl_rules(role) {
        setuser.arg(rule);
    }
    setuser.query_async::<()>(&mut admin).await.unwrap();
    let url = env
        .redis_url
        .replacen("redis://", &format!("redis://{user}:pw@"), 1);
    Store::connect(&url, Duration::from_secs(5)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limiter_settles_real_usage_and_takes_lapsed_slots_back_under_each_roles_acl() {
    let env = TestEnv::new("llmlimiter").await;
    let admin = store_as(&env, "limits-admin").await;
    let cli = store_as(&env, "cli").await;
    let minute = Duration::from_secs(60);
    admin
        .limits_set("t", &[(Field::TokensPerMinute, 600)])
        .await
        .unwrap();
    admin
        .limits_set("f", &[(Field::MaxInFlight, 1)])
        .await
        .unwrap();
    // The CLI's own user reads the limits but cannot set them.
    assert!(cli
        .limits_set("t", &[(Field::TokensPerMinute, 1)])
        .await
        .is_err());
    let shown = cli.limits_show().await.unwrap();
    assert_eq!(shown["t"]["tokens_per_minute"], 600, "{shown}");

    for role in ["worker", "orchestrator", "synthesizer"] {
        let store = store_as(&env, role).await;
        let spec = ModelSpec {
            requests_per_minute: Some(60),
            ..Default::default()
        };
        store.seed_limits(role, &spec).await.unwrap();

        // 600 tokens a minute (10 a second): a call estimated at 600 empties the bucket, the
        // next waits; settled at 100 used, 500 come back.
        let first = store.acquire_call("t", 600, minute).await.unwrap().unwrap();
        let wait = store
            .acquire_call("t", 300, minute)
            .await
            .unwrap()
            .unwrap_err();
        assert!(wait > Duration::from_secs(25), "{role}: {wait:?}");
        store.settle_call("t", &first, Some(100)).await.unwrap();
        let second = store.acquire_call("t", 300, minute).await.unwrap().unwrap();
        // A call that used far more than estimated puts the bucket in debt.
        store.settle_call("t", &second, Some(2_000)).await.unwrap();
        let wait = store
            .acquire_call("t", 1, minute)
            .await
            .unwrap()
            .unwrap_err();
        assert!(wait > Duration::from_secs(100), "{role}: {wait:?}");
        admin.limits_clear("t", &[]).await.unwrap();
        admin
            .limits_set("t", &[(Field::TokensPerMinute, 600)])
            .await
            .unwrap();
        redis::cmd("DEL")
            .arg(&chorus_shared::steps::llm::limits::keys("t")[2])
            .exec_async(&mut env.redis().await)
            .await
            .unwrap();

        // One slot: taken, then free again once its lease lapses (a killed worker's).
        let lease = Duration::from_millis(300);
        let held = store.acquire_call("f", 1, lease).await.unwrap().unwrap();
        assert!(store.acquire_call("f", 1, lease).await.unwrap().is_err());
        assert_eq!(cli.limits_show().await.unwrap()["f"]["calls_in_flight"], 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = store.acquire_call("f", 1, lease).await.unwrap().unwrap();
        store.settle_call("f", &held, None).await.unwrap();
        store.settle_call("f", &next, None).await.unwrap();
        assert!(store.acquire_call("f", 1, lease).await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let shown = cli.limits_show().await.unwrap();
    assert_eq!(shown["worker"]["requests_per_minute"], 60, "{shown}");
    let mut redis = env.redis().await;
    for role in [
        "limits-admin",
        "cli",
        "worker",
        "orchestrator",
        "synthesizer",
    ] {
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(format!("{}-{role}", env.vhost))
            .exec_async(&mut redis)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_call_gives_its_slot_back_at_once() {
    std::env::set_var(KEY_VAR, "test-key");
    let server = katan(&["--latency-ms", "5000"]).await;
    let env = TestEnv::new("llmcancel").await;
    let store = Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    let slot = StoreSlot::default();
    slot.attach(store.clone());
    let providers = BTreeMap::from([(
        "katan".to_owned(),
        ProviderSpec {
            base_url: Some(format!("http://127.0.0.1:{}/v1", server.port)),
            base_url_env: None,
            api_key_env: Some(KEY_VAR.to_owned()),
            timeout_ms: Some(30_000),
            structured_output: StructuredOutput::JsonObject,
            ca_file: None,
        },
    )]);
    let models = BTreeMap::from([(
        "slow".to_owned(),
        ModelSpec {
            provider: "katan".to_owned(),
            model: "gpt-test".to_owned(),
            max_in_flight: Some(1),
            ..Default::default()
        },
    )]);
    let catalog = Catalog::build(&providers, &models, Path::new("."), &slot).unwrap();
    let spec = LlmSpec {
        model: "slow".to_owned(),
        system: None,
        prompt: "Say {{ subtask.input.word }}".to_owned(),
        output: LlmOutput::Text,
    };
    let step = Step::build_llm(&spec, &catalog, &["default".to_owned()]).unwrap();
    let body = json!({"step": "handle", "subtask": {"id": "0", "input": {"word": "hi"}}});
    let limits = CallLimits {
        timeout: Duration::from_secs(30),
        max_answer_bytes: 1 << 20,
    };
    let (body, cancel) = (body.to_string(), CancellationToken::new());
    let (answer, ()) = tokio::join!(step.call(body.as_bytes(), limits, &cancel), async {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let shown = store.limits_show().await.unwrap();
        assert_eq!(shown["slow"]["calls_in_flight"], 1, "{shown}");
        cancel.cancel();
    });
    assert!(matches!(answer, Err(StepError::Cancelled)), "{answer:?}");
    // Its lease would hold the slot for 35 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown = store.limits_show().await.unwrap();
    assert_eq!(shown["slow"]["calls_in_flight"], 0, "{shown}");
}

/// llm-katan's prompt plus completion tokens at `port` (its `/metrics` has no such series
/// before its first call: 0).
async fn katan_tokens(port: u16) -> u64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("llm_katan_prompt_tokens_total{")
                || line.starts_with("llm_katan_completion_tokens_total{")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// llm-katan's prompt plus completion tokens at `port`, sampled every 100 ms (with the time
/// since `started`) until `done` fires or two minutes pass.
fn sample_tokens(
    port: u16,
    started: Instant,
    done: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(Duration, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let deadline = started + Duration::from_secs(120);
        while !done.is_cancelled() && Instant::now() < deadline {
            samples.push((started.elapsed(), katan_tokens(port).await));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_per_minute_hold_across_two_workers_end_to_end() {
    // Each call of `Say "wN"` is 12 tokens at llm-katan (2 prompt, 10 completion), estimated
    // at 1 + 16 before it starts. 55 calls are 660 tokens: the bucket's minute (600) goes at
    // once, the 60 more refill at 10 a second, so the task takes about 6 s (unlimited, well
    // under 1 s).
    let server = katan(&[]).await;
    let mut env = TestEnv::new("llmtpm").await;
    let path = kinds_file(
        &server.base_url(),
        "tokens_per_minute = 600\nmax_tokens = 16",
        "Say {{ subtask.input }}",
    );
    start(&mut env, &path, 2);
    let started = Instant::now();
    let done = CancellationToken::new();
    let sampler = sample_tokens(server.port, started, done.clone());
    let (code, outcome, took) = run(&env, "echo", 55).await;
    done.cancel();
    let samples = sampler.await.unwrap();
    // Nothing failed for good, and no attempt was used up waiting.
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["stats"]["succeeded"], 55, "{outcome}");
    assert_eq!(outcome["stats"]["retries"], 0, "{outcome}");
    let total = katan_counts(server.port).await;
    assert_eq!(total.requests, 55);
    let tokens = total.prompt_tokens + total.completion_tokens;
    assert_eq!(tokens, 660, "llm-katan's count per call changed: {total:?}");
    assert!(took >= Duration::from_secs(4), "took {took:?}");
    // From the first tokens on, what reached the provider by each sample stays within the
    // bucket (a minute's worth) plus its refill since then; one call's settlement (its real
    // tokens over its estimate) and a poll's lag are the slack.
    let first = samples
        .iter()
        .find(|(_, tokens)| *tokens > 0)
        .map(|(at, _)| *at)
        .expect("no sample saw a call");
    for (at, tokens) in &samples {
        let since = at.saturating_sub(first).as_secs_f64() + 0.2;
        let allowed = 600.0 + 10.0 * since + 12.0;
        assert!(
            (*tokens as f64) <= allowed,
            "{tokens} tokens reached llm-katan {since:.1} s after the first: over {allowed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_call_starts_once_parallel_subtasks_have_spent_the_budget() {
    // Six subtasks start at once (the worker checks the budget, 0 used, for each); their calls
    // then wait their turn, one every 500 ms (120 a minute). Each call is 12 tokens: after
    // two have been recorded the budget of 20 is spent, and the calls still waiting are
    // refused before they are sent, against the task's tokens in Redis at that moment.
    let server = katan(&[]).await;
    let mut env = TestEnv::new("llmbudget").await;
    let path = kinds_file(
        &server.base_url(),
        "requests_per_minute = 120",
        "Say {{ subtask.input }}",
    );
    let file = path.to_str().unwrap();
    let vars = [(KEY_VAR, "test-key")];
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &vars);
    let worker = ["--kinds-file", file, "--concurrency", "8"];
    env.spawn_with("chorus-worker", &worker, &vars);
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &vars);
    let (code, outcome, _) = run_with(&env, "echo", 6, &["--max-tokens", "20"]).await;
    assert_ne!(code, 0, "{outcome}");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert!(
        outcome.to_string().contains("token budget exceeded"),
        "{outcome}"
    );
    let reached = katan_requests(server.port).await;
    assert!(
        reached <= 3,
        "{reached} calls reached llm-katan after the budget was spent: {outcome}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_that_wakes_up_late_keeps_the_refill_it_was_told_to_wait_for() {
    // 300 a minute, burst 1: a request every 200 ms. This caller always asks again 50 ms after
    // the wait it was told (as a worker's wake-up and round trip, exaggerated): the refill of
    // those 50 ms is kept for it, so it still starts one call every 200 ms, not every 250.
    let env = TestEnv::new("llmlate").await;
    let store = Store::connect(&env.redis_url, Duration::from_secs(5))
        .await
        .unwrap();
    let spec = ModelSpec {
        requests_per_minute: Some(300),
        ..Default::default()
    };
    store.seed_limits("late", &spec).await.unwrap();
    let minute = Duration::from_secs(60);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(4_500) {
        match store.acquire_call("late", 1, minute).await.unwrap() {
            Ok(permit) => {
                calls += 1;
                store.settle_call("late", &permit, None).await.unwrap();
            }
            Err(wait) => tokio::time::sleep(wait + Duration::from_millis(50)).await,
        }
    }
    // At 0 and 250 ms, then every 200 ms: 23 by 4.5 s (one every 250 ms: 19).
    assert!(calls >= 21, "{calls} calls in 4.5 s at 300 a minute");
    // Never more than the limit allows: a minute's rate over the time plus the burst.
    assert!(calls <= 4_500 * 300 / 60_000 + 1, "{calls} calls");
}
