//! The call cache of `llm` steps (docs/llm.md#the-call-cache) through the real services: an
//! identical call within its ttl is answered from Redis without reaching the provider (llm-katan
//! counts what reaches it; the scripted test server lists it), counted in `stats.tokens` as a
//! call and a cache hit that used no tokens; on by default at temperature 0 only; a retried
//! subtask does not pay its first call again; an expired or unreadable entry is a miss.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chorus_tests::servers::{katan, katan_requests, scripted, scripted_requests};
use chorus_tests::TestEnv;
use serde_json::{json, Value};

/// The environment variable the providers read their API key from (llm-katan wants an
/// `Authorization` header).
const KEY_VAR: &str = "CHORUS_TEST_LLM_CACHE_KEY";

/// Seconds the `brief` model keeps an answer.
const BRIEF_TTL_S: u64 = 3;

/// A kinds file with one kind per model on llm-katan (`Say <input> to <model>`: the models'
/// calls differ, so none answers another's; one subtask per item) and
/// the `flaky` kind on the scripted server (JSON output, its repair round failing once).
fn kinds_file(katan: &str, scripted: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-cache-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = format!(
        r#"
[providers.katan]
base_url = "{katan}"
api_key_env = "{KEY_VAR}"
structured_output = "json_object"

[providers.scripted]
base_url = "{scripted}"

[models.zero]
provider = "katan"
model = "gpt-test"
temperature = 0

[models.warm]
provider = "katan"
model = "gpt-test"
temperature = 0.8

[models.warm_cached]
provider = "katan"
model = "gpt-test"
temperature = 0.8
cache = true

[models.brief]
provider = "katan"
model = "gpt-test"
temperature = 0
cache_ttl_s = {BRIEF_TTL_S}

[models.flaky]
provider = "scripted"
model = "scripted-1"
temperature = 0

[kinds.flaky.handlers.default]
type = "llm"
model = "flaky"
output = "json"
prompt = "[json:flaky] {{{{ subtask.input }}}}"
"#
    );
    for model in ["zero", "warm", "warm_cached", "brief"] {
        text.push_str(&format!(
            "\n[kinds.{model}.handlers.default]\ntype = \"llm\"\nmodel = \"{model}\"\nprompt = \"Say {{{{ subtask.input }}}} to {model}\"\n"
        ));
    }
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The three services on `path`, the worker retrying quickly.
fn start(env: &mut TestEnv, path: &Path) {
    let file = path.to_str().unwrap();
    let vars = [(KEY_VAR, "test-key")];
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &vars);
    let worker = [
        "--kinds-file",
        file,
        "--retry-base-delay-ms",
        "20",
        "--retry-max-delay-ms",
        "200",
    ];
    env.spawn_with("chorus-worker", &worker, &vars);
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &vars);
}

/// Submits a task of `kind` with one subtask per item of `items` and waits for its outcome.
async fn run(env: &TestEnv, kind: &str, items: &[&str]) -> Value {
    let input = json!({ "items": items }).to_string();
    let args = ["submit", "--kind", kind, "--input", &input, "--wait"];
    let (code, stdout) = env.cli(&args).await;
    let outcome: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
    assert_eq!(code, 0, "{outcome}");
    outcome
}

/// A model's `stats.tokens` entry of calls that were all answered from the cache.
fn all_hits(calls: u64) -> Value {
    json!({"prompt": 0, "completion": 0, "cached": 0, "calls": calls, "cache_hits": calls})
}

/// Runs `kind` on three items twice: how many requests reached llm-katan each time, and the
/// two outcomes.
async fn twice(env: &TestEnv, port: u16, kind: &str) -> ((u64, u64), (Value, Value)) {
    let items = ["alpha", "beta", "gamma"];
    let before = katan_requests(port).await;
    let first = run(env, kind, &items).await;
    let middle = katan_requests(port).await;
    let second = run(env, kind, &items).await;
    let after = katan_requests(port).await;
    ((middle - before, after - middle), (first, second))
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_calls_are_answered_from_the_cache_and_paid_once() {
    std::env::set_var(KEY_VAR, "test-key");
    let (server, script) = (katan(&[]).await, scripted());
    let mut env = TestEnv::new("llmcache").await;
    start(
        &mut env,
        &kinds_file(&server.base_url(), &script.base_url()),
    );

    // Temperature 0: the resubmitted task's three calls reach no provider and cost nothing, and
    // its answers are the first's (llm-katan's carry the time of day).
    let (paid, (first, second)) = twice(&env, server.port, "zero").await;
    assert_eq!(paid, (3, 0), "{first}\n{second}");
    assert_eq!(first["stats"]["tokens"]["zero"]["cache_hits"], 0, "{first}");
    assert!(first["stats"]["tokens"]["zero"]["prompt"].as_u64().unwrap() > 0);
    assert_eq!(second["stats"]["tokens"]["zero"], all_hits(3), "{second}");
    assert_eq!(second["output"], first["output"]);
    let (code, status) = env.cli(&["status", second["id"].as_str().unwrap()]).await;
    assert_eq!(code, 0, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tokens"]["zero"], all_hits(3), "{status}");

    // An entry Redis cannot give back (a value of another type) or that is not an answer is a
    // miss: the call is paid and succeeds, logged once, and the entry is written again.
    let mut redis = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("chorus:llm:cache:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for (index, key) in keys.iter().enumerate() {
        let mut spoil = redis::pipe();
        spoil.del(key);
        if index == 0 {
            spoil.hset(key, "not", "an answer");
        } else {
            spoil.set(key, "garbage");
        }
        spoil.exec_async(&mut redis).await.unwrap();
    }
    let (paid, (spoiled, again)) = twice(&env, server.port, "zero").await;
    assert_eq!(paid, (3, 0), "{spoiled}\n{again}");
    assert!(
        spoiled["output"][0]
            .as_str()
            .unwrap()
            .ends_with("User: Say alpha to zero"),
        "{spoiled}"
    );
    assert_eq!(spoiled["stats"]["tokens"]["zero"]["cache_hits"], 0);
    assert_eq!(again["stats"]["tokens"]["zero"], all_hits(3), "{again}");
    let log = env.log_of(1);
    assert_eq!(
        log.matches("an answer; calls go on uncached").count(),
        1,
        "{log}"
    );

    // Above 0, only `cache = true` caches.
    let (paid, (_, second)) = twice(&env, server.port, "warm").await;
    assert_eq!(paid, (3, 3));
    assert_eq!(second["stats"]["tokens"]["warm"]["cache_hits"], 0);
    let (paid, (_, second)) = twice(&env, server.port, "warm_cached").await;
    assert_eq!(paid, (3, 0));
    assert_eq!(second["stats"]["tokens"]["warm_cached"], all_hits(3));

    // Within its ttl an answer is used; once expired, paid again.
    let (paid, _) = twice(&env, server.port, "brief").await;
    assert_eq!(paid, (3, 0));
    tokio::time::sleep(Duration::from_millis(BRIEF_TTL_S * 1000 + 500)).await;
    let (paid, _) = twice(&env, server.port, "brief").await;
    assert_eq!(paid, (3, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_subtask_does_not_pay_its_first_call_again() {
    std::env::set_var(KEY_VAR, "test-key");
    let (server, script) = (katan(&[]).await, scripted());
    let mut env = TestEnv::new("llmcacheretry").await;
    start(
        &mut env,
        &kinds_file(&server.base_url(), &script.base_url()),
    );

    // Attempt 1: the first call is answered (text, not JSON), its repair round fails with a
    // 500, so the attempt fails retryable. Attempt 2: the first call comes from the cache, the
    // repair is paid and succeeds.
    let outcome = run(&env, "flaky", &["one"]).await;
    assert_eq!(
        outcome["output"],
        json!([{"ok": true, "words": 2}]),
        "{outcome}"
    );
    assert_eq!(outcome["stats"]["retries"], 1, "{outcome}");
    // Three calls counted: attempt 1's answered one (carried with the failed attempt's usage),
    // and attempt 2's two, of which the first is the cache hit.
    let tokens = &outcome["stats"]["tokens"]["flaky"];
    assert_eq!(tokens["calls"], 3, "{outcome}");
    assert_eq!(tokens["cache_hits"], 1, "{outcome}");
    let requests = scripted_requests(script.port).await;
    let last = |body: &Value| {
        body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let firsts = requests
        .iter()
        .filter(|b| last(b).starts_with("[json:flaky]"));
    assert_eq!(firsts.count(), 1, "{requests:?}");
    let repairs = requests
        .iter()
        .filter(|b| last(b).starts_with("That answer is invalid"));
    assert_eq!(repairs.count(), 2, "{requests:?}");
}
