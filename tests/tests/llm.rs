//! `llm` steps (docs/llm.md) against real OpenAI-compatible servers: llm-katan (a test server
//! from PyPI, installed by deploy/llm-katan.sh) in its echo backend for transport, `usage` and
//! the failure classes, and the SCRIPTED test server tests/fixtures/llm/scripted_server.py
//! (canned completions) for plans, repairs, reviews and synthesis through the three services.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use chorus_shared::steps::{CallLimits, ModelSpec, Step, StepError};
use chorus_shared::store::TaskKeys;
use chorus_tests::observe::{free_address, Scrape};
use chorus_tests::servers::{katan, scripted, scripted_requests};
use chorus_tests::TestEnv;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The environment variable the tests' providers read their API key from (llm-katan wants an
/// `Authorization` header).
const KEY_VAR: &str = "CHORUS_TEST_LLM_KEY";

/// An `llm` handler step on model `gpt-test` at `port`, built as a kinds file would.
fn katan_step(port: u16) -> Step {
    let model = ModelSpec {
        model: "gpt-test".to_owned(),
        temperature: Some(0.0),
        max_tokens: Some(64),
        price_per_million_input: Some(1.0),
        price_per_million_output: Some(2.0),
        ..Default::default()
    };
    chorus_tests::servers::katan_step(port, 10_000, model)
}

async fn call(step: &Step) -> Result<Value, StepError> {
    let request = json!({"step": "handle", "subtask": {"id": "0", "input": {"word": "hello"}}});
    let limits = CallLimits {
        timeout: Duration::from_secs(10),
        max_answer_bytes: 1 << 20,
    };
    let answer = step
        .call(
            request.to_string().as_bytes(),
            limits,
            &CancellationToken::new(),
        )
        .await?;
    Ok(serde_json::from_slice(&answer).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_calls_llm_katan_with_real_usage_and_classifies_its_failures() {
    std::env::set_var(KEY_VAR, "test-key");
    let (ok, limited, erring, timing_out) = tokio::join!(
        katan(&[]),
        katan(&["--rate-limit-after", "1"]),
        katan(&["--error-rate", "1"]),
        katan(&["--timeout-after", "1"]),
    );
    let answer = call(&katan_step(ok.port)).await.unwrap();
    let output = answer["output"].as_str().unwrap();
    assert!(output.contains("User: Say hello"), "{answer}");
    let usage = &answer["usage"][0];
    assert_eq!(usage["model"], "echo", "{answer}");
    assert_eq!(usage["calls"], 1, "{answer}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{answer}");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{answer}");
    let (prompt, completion) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    let cost = usage["cost"].as_f64().unwrap();
    assert!(
        (cost - (prompt + 2.0 * completion) / 1e6).abs() < 1e-12,
        "{answer}"
    );
    // 429, 500 and 504 are retryable, as for an http step; the first call of the 429 and 504
    // servers passes.
    for (server, status) in [(&limited, "429"), (&erring, "500"), (&timing_out, "504")] {
        let step = katan_step(server.port);
        if status != "500" {
            call(&step).await.unwrap();
        }
        match call(&step).await {
            Err(StepError::Retryable { message, .. }) => {
                assert!(message.contains(status), "{status}: {message}");
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

/// A kinds file with the `brief` kind (every step an `llm` step) on the scripted server and
/// an `echo` kind (default planner, one llm handler) on llm-katan.
fn kinds_file(scripted: u16, katan: u16) -> PathBuf {
    kinds_file_with(scripted, katan, "")
}

/// [`kinds_file`] with `extra` lines in model `m`'s table.
fn kinds_file_with(scripted: u16, katan: u16, extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-llm-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[providers.scripted]
base_url = "http://127.0.0.1:{scripted}/v1"

[providers.katan]
base_url = "http://127.0.0.1:{katan}/v1"
api_key_env = "{KEY_VAR}"
structured_output = "json_object"

[models.m]
provider = "scripted"
model = "scripted-1"
temperature = 0
{extra}

[models.echo]
provider = "katan"
model = "gpt-test"

[kinds.brief.planner]
type = "llm"
model = "m"
system = "You plan reports."
prompt = "{{{{ task.input.marker }}}} Topic: {{{{ task.input.topic }}}}"

[kinds.brief.handlers.researcher]
type = "llm"
model = "m"
prompt = "Research: {{{{ subtask.input.requirements }}}}"

[kinds.brief.handlers.writer]
type = "llm"
model = "m"
prompt = "Write {{{{ subtask.input.title }}}} from{{% for d in dependencies %}} <{{{{ d.output }}}}>{{% endfor %}}{{% if subtask.input.feedback %}} Reviewer: {{{{ subtask.input.feedback }}}}{{% endif %}}"

[kinds.brief.review]
type = "llm"
model = "m"
prompt = "[review] round={{{{ round }}}}{{% for s in subtasks %}} {{{{ s.id }}}}{{% endfor %}}"

[kinds.brief.synthesis]
type = "llm"
model = "m"
prompt = "Assemble:{{% for o in outputs %}} [{{{{ o.id }}}}] {{{{ o.output }}}}{{% endfor %}}"

[kinds.structured.handlers.default]
type = "llm"
model = "m"
output = "json"
prompt = "[json] {{{{ subtask.input }}}}"

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

/// Submits a task and waits: exit code and outcome.
async fn run(env: &TestEnv, kind: &str, input: &Value, extra: &[&str]) -> (i32, Value) {
    let input = input.to_string();
    let mut args = vec!["submit", "--kind", kind, "--input", &input, "--wait"];
    args.extend_from_slice(extra);
    let (code, stdout) = env.cli(&args).await;
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
    (code, outcome)
}

/// The bodies the scripted server received whose last message contains `marker`.
async fn requests_with(port: u16, marker: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{port}/requests");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    all.into_iter()
        .filter(|body| {
            body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .is_some_and(|c| c.contains(marker))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn models_plan_draft_review_and_synthesize_through_the_services() {
    std::env::set_var(KEY_VAR, "test-key");
    let (server, echo) = (scripted(), katan(&[]).await);
    let mut env = TestEnv::new("llmsteps").await;
    let path = kinds_file(server.port, echo.port);
    let file = path.to_str().unwrap();
    let vars = [(KEY_VAR, "test-key")];
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &vars);
    let types = ["--kinds-file", file, "--types", "default,researcher,writer"];
    env.spawn_with("chorus-worker", &types, &vars);
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &vars);

    // A plan with two worker types and a dependency; the review sends "draft" back once with
    // feedback, which its redone prompt carries; the synthesis assembles the final round.
    let input = json!({"marker": "[plan:deps]", "topic": "agents"});
    let (code, outcome) = run(&env, "brief", &input, &["--max-rounds", "2"]).await;
    assert_eq!(code, 0, "{outcome}");
    let output = outcome["output"].as_str().unwrap();
    assert!(
        output.starts_with("echo: Assemble: [research] echo: Research: facts on {topic}"),
        "{output}"
    );
    assert!(output.contains("[draft] echo: Write Overview from <echo: Research: facts on {topic}> Reviewer: add numbers"), "{output}");
    let plans = requests_with(server.port, "[plan:deps]").await;
    assert_eq!(plans.len(), 1);
    let format = &plans[0]["response_format"];
    assert_eq!(format["type"], "json_schema", "{format}");
    let worker_types = &format["json_schema"]["schema"]["properties"]["subtasks"]["items"]
        ["properties"]["worker_type"]["enum"];
    assert_eq!(worker_types, &json!(["researcher", "writer"]));
    assert_eq!(plans[0]["messages"][0]["content"], "You plan reports.");
    assert_eq!(plans[0]["temperature"], 0.0);
    let reviews = requests_with(server.port, "[review]").await;
    // Round 2 is the last `--max-rounds 2` allows: it is not reviewed.
    assert_eq!(reviews.len(), 1);
    // The redone draft's prompt carries the feedback (the synthesis' quotes its output too).
    let redone = requests_with(server.port, "Reviewer: add numbers").await;
    let drafts = redone
        .iter()
        .filter(|body| {
            body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("Write")
        })
        .count();
    assert_eq!(drafts, 1, "{redone:?}");

    // An invalid plan is sent back once with what is wrong, and the repaired one runs.
    let input = json!({"marker": "[plan:repair]", "topic": "markets"});
    let (code, outcome) = run(&env, "brief", &input, &[]).await;
    assert_eq!(code, 0, "{outcome}");
    let repairs = requests_with(server.port, "That answer is invalid").await;
    assert_eq!(repairs.len(), 1);
    let told = repairs[0]["messages"][3]["content"].as_str().unwrap();
    assert!(told.contains("/subtasks/0/worker_type"), "{told}");

    // A planner whose provider fails twice (HTTP 500) is run again and the task goes on.
    let input = json!({"marker": "[plan:flaky]", "topic": "outages"});
    let (code, outcome) = run(&env, "brief", &input, &[]).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(requests_with(server.port, "[plan:flaky]").await.len(), 3);

    // Invalid twice: the task is rejected with the validation error.
    let input = json!({"marker": "[plan:invalid]", "topic": "x"});
    let (code, outcome) = run(&env, "brief", &input, &[]).await;
    assert_eq!(code, 3, "{outcome}");
    let error = outcome["errors"][0]["message"].as_str().unwrap();
    assert!(error.contains("invalid plan twice"), "{error}");
    assert!(error.contains("worker_type"), "{error}");

    // `output = "json"`: the reply parsed, asked for as structured output.
    let (code, outcome) = run(&env, "structured", &json!({"items": ["a b"]}), &[]).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        outcome["output"],
        json!([{"ok": true, "words": 3}]),
        "{outcome}"
    );
    let asked = requests_with(server.port, "[json] a b").await;
    assert_eq!(asked[0]["response_format"]["json_schema"]["name"], "output");

    // A handler on llm-katan through the services (json_object provider, key from the env).
    let (code, outcome) = run(&env, "echo", &json!({"items": ["hello"]}), &[]).await;
    assert_eq!(code, 0, "{outcome}");
    assert!(
        outcome["output"][0]
            .as_str()
            .unwrap()
            .contains("User: Say hello"),
        "{outcome}"
    );
    // The handler's usage (llm-katan's real token counts) reaches the outcome's stats.
    let tokens = &outcome["stats"]["tokens"]["echo"];
    assert_eq!(tokens["calls"], 1, "{outcome}");
    assert!(tokens["prompt"].as_u64().unwrap() > 0, "{outcome}");
    assert!(tokens["completion"].as_u64().unwrap() > 0, "{outcome}");
}

/// The three services on the kinds file `path`, each with its metrics listener on the address
/// of `listen` at its place (orchestrator, worker, synthesizer).
fn start_listening(env: &mut TestEnv, path: &std::path::Path, listen: &[String]) {
    let file = path.to_str().unwrap();
    let vars = [(KEY_VAR, "test-key")];
    let orchestrator = ["--kinds-file", file, "--http-listen", &listen[0]];
    env.spawn_with("chorus-orchestrator", &orchestrator, &vars);
    let worker = [
        "--kinds-file",
        file,
        "--types",
        "default,researcher,writer",
        "--http-listen",
        &listen[1],
    ];
    env.spawn_with("chorus-worker", &worker, &vars);
    let synthesizer = ["--kinds-file", file, "--http-listen", &listen[2]];
    env.spawn_with("chorus-synthesizer", &synthesizer, &vars);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_steps_model_calls_are_counted_by_the_service_that_made_them() {
    std::env::set_var(KEY_VAR, "test-key");
    let (server, echo) = (scripted(), katan(&[]).await);
    let mut env = TestEnv::new("llmmetrics").await;
    let listen: Vec<String> = (0..3).map(|_| free_address()).collect();
    start_listening(&mut env, &kinds_file(server.port, echo.port), &listen);
    // A plan (orchestrator), a researcher, a draft and its redo (worker), a review and the
    // synthesis (synthesizer): six calls of model `m`.
    let input = json!({"marker": "[plan:deps]", "topic": "agents"});
    let (code, outcome) = run(&env, "brief", &input, &["--max-rounds", "2"]).await;
    assert_eq!(code, 0, "{outcome}");
    let scrapes = [
        Scrape::of(&listen[0]).await,
        Scrape::of(&listen[1]).await,
        Scrape::of(&listen[2]).await,
    ];
    let calls = |scrape: &Scrape, result: &str| {
        scrape.value(
            "chorus_llm_calls_total",
            &[("model", "m"), ("result", result)],
        )
    };
    let tokens = |scrape: &Scrape, kind: &str| {
        scrape.value("chorus_llm_tokens_total", &[("model", "m"), ("type", kind)])
    };
    let ok: Vec<f64> = scrapes.iter().map(|s| calls(s, "ok")).collect();
    assert_eq!(
        ok,
        [1.0, 3.0, 2.0],
        "calls counted by orchestrator, worker, synthesizer"
    );
    let stats = &outcome["stats"]["tokens"]["m"];
    assert_eq!(stats["calls"], 6, "{outcome}");
    for (kind, field) in [("prompt", "prompt"), ("completion", "completion")] {
        let counted: f64 = scrapes.iter().map(|s| tokens(s, kind)).sum();
        assert_eq!(counted, stats[field].as_f64().unwrap(), "{kind}: {outcome}");
    }
    // A plan invalid twice: both paid calls are counted, though the step failed.
    let input = json!({"marker": "[plan:invalid]", "topic": "x"});
    let (code, outcome) = run(&env, "brief", &input, &[]).await;
    assert_eq!(code, 3, "{outcome}");
    assert_eq!(calls(&Scrape::of(&listen[0]).await, "ok"), 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_made_while_an_earlier_plan_lease_is_held_is_used_once_and_counted() {
    std::env::set_var(KEY_VAR, "test-key");
    let (server, echo) = (scripted(), katan(&[]).await);
    let mut env = TestEnv::new("llmlease").await;
    let listen: Vec<String> = (0..3).map(|_| free_address()).collect();
    // Without the call cache, which would answer a second planner run (same origin) from the
    // first's call.
    let path = kinds_file_with(server.port, echo.port, "cache = false");
    start_listening(&mut env, &path, &listen);
    // An earlier task of this id left its plan lease, held for one more second: the new task
    // is claimed without it, and planned once it lapses.
    env.client()
        .await
        .wait_for_consumers("chorus.tasks", 1)
        .await;
    let id = "lease-held-by-an-earlier-task";
    redis::cmd("SET")
        .arg(TaskKeys::new(id).plan_lease())
        .arg("an-earlier-owner")
        .arg("PX")
        .arg(1_000)
        .exec_async(&mut env.redis().await)
        .await
        .unwrap();
    let held = std::time::Instant::now();
    let input = json!({"marker": "[plan:deps]", "topic": "agents"});
    let (code, outcome) = run(&env, "brief", &input, &["--id", id]).await;
    assert_eq!(code, 0, "{outcome}");
    // It was planned once the earlier lease lapsed, not before.
    assert!(held.elapsed() >= Duration::from_secs(1), "{outcome}");
    // The plan made before the claim is the one used: the planner ran once, and every call
    // that reached the provider is counted in the outcome.
    assert_eq!(requests_with(server.port, "[plan:deps]").await.len(), 1);
    let received = scripted_requests(server.port).await.len();
    assert_eq!(
        outcome["stats"]["tokens"]["m"]["calls"], received,
        "{outcome}"
    );
}
