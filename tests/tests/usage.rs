//! Tokens and cost through the real services: steps' `usage` summed exactly once per model into
//! the outcome's `stats` and `chorus status`, failed attempts included, and the `max_tokens`
//! budget (docs/kinds.md#usage).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use chorus_tests::servers::{scripted, scripted_requests as requests};
use chorus_tests::{repo_dir, TestEnv};
use serde_json::{json, Value};

/// A kinds file with the `scripted` kind of the step fixture: command planner and handlers
/// (one per call, one pooled) that answer whatever `usage` their input gives.
fn kinds_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-usage-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let step = repo_dir().join("tests/fixtures/kinds/step.py");
    let step = step.display();
    let text = format!(
        r#"
[kinds.scripted]
planner = {{ type = "command", program = "python3", args = ["{step}"] }}
handlers.default = {{ type = "command", program = "python3", args = ["{step}"] }}
handlers.pooled = {{ type = "command", mode = "pool", pool_size = 2, program = "python3", args = ["{step}", "pool"] }}
"#
    );
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(env: &mut TestEnv) {
    let path = kinds_file();
    let file = path.to_str().unwrap();
    env.spawn("chorus-orchestrator", &["--kinds-file", file]);
    env.spawn(
        "chorus-worker",
        &["--kinds-file", file, "--types", "default,pooled"],
    );
    env.spawn("chorus-synthesizer", &["--kinds-file", file]);
}

async fn run(env: &TestEnv, id: &str, input: &Value, extra: &[&str]) -> (i32, Value) {
    let input = input.to_string();
    let mut args = vec![
        "submit", "--kind", "scripted", "--id", id, "--input", &input, "--wait",
    ];
    args.extend_from_slice(extra);
    let (code, stdout) = env.cli(&args).await;
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
    (code, outcome)
}

fn usage(model: &str, prompt: u64, completion: u64, cost: Option<f64>) -> Value {
    let mut entry = json!({"model": model, "prompt_tokens": prompt,
                           "completion_tokens": completion, "cached_tokens": 1});
    if let Some(cost) = cost {
        entry["cost"] = json!(cost);
    }
    entry
}

#[tokio::test(flavor = "multi_thread")]
async fn every_subtasks_usage_is_summed_once_per_model_failed_ones_included() {
    let mut env = TestEnv::new("usagesum").await;
    start(&mut env);
    let input = json!({"subtasks": [
        {"input": {"value": "a", "usage": [usage("writer", 100, 20, Some(0.5)),
                                           usage("judge", 7, 3, None)]}},
        {"id": "p", "worker_type": "pooled",
         "input": {"value": "b", "usage": [usage("writer", 50, 10, Some(0.25))]}},
        // Answers with usage, then fails (a spawn no worker type serves): paid, so counted.
        {"id": "f", "input": {"mode": "spawn", "value": "c",
                              "usage": [usage("judge", 1000, 1, None)],
                              "spawn": [{"worker_type": "nobody", "input": {}}]}}
    ]});
    let (code, outcome) = run(&env, "usage-1", &input, &["--on-failure", "continue"]).await;
    assert_eq!(outcome["status"], "partial", "{code}: {outcome}");
    let stats = &outcome["stats"];
    assert_eq!(
        stats["tokens"],
        json!({
            "writer": {"prompt": 150, "completion": 30, "cached": 2, "calls": 2, "cache_hits": 0},
            "judge": {"prompt": 1007, "completion": 4, "cached": 2, "calls": 2, "cache_hits": 0},
        }),
        "{outcome}"
    );
    assert_eq!(stats["cost"], json!(0.75), "{outcome}");
    // `chorus status` reads the same counters from the task's record.
    let (code, status) = env.cli(&["status", "usage-1"]).await;
    assert_eq!(code, 0, "{status}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tokens"], stats["tokens"], "{status}");
    assert_eq!(status["cost"], json!(0.75), "{status}");
}

/// A chain of three subtasks of 100 tokens each under a budget of 150: the first two start
/// (the budget is not spent before the second), the third does not.
fn chain() -> Value {
    let step = |id: &str, after: &[&str]| {
        json!({"id": id, "depends_on": after,
               "input": {"value": id, "usage": [usage("writer", 60, 40, None)]}})
    };
    json!({"subtasks": [step("0", &[]), step("1", &["0"]), step("2", &["1"])]})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_token_budget_fails_the_task_or_leaves_it_partial() {
    let mut env = TestEnv::new("usagebudget").await;
    start(&mut env);
    let (code, outcome) = run(&env, "budget-fail", &chain(), &["--max-tokens", "150"]).await;
    assert_eq!(outcome["status"], "failed", "{code}: {outcome}");
    let errors = outcome["errors"].to_string();
    assert!(errors.contains("token budget exceeded"), "{outcome}");
    assert_eq!(
        outcome["stats"]["tokens"]["writer"]["calls"], 2,
        "{outcome}"
    );

    let (_, outcome) = run(
        &env,
        "budget-partial",
        &chain(),
        &["--max-tokens", "150", "--on-failure", "continue"],
    )
    .await;
    assert_eq!(outcome["status"], "partial", "{outcome}");
    assert_eq!(outcome["errors"][0]["subtask"], "2", "{outcome}");
    assert_eq!(
        outcome["stats"]["tokens"]["writer"]["prompt"], 120,
        "{outcome}"
    );

    // Without a budget, the same chain runs whole.
    let (code, outcome) = run(&env, "budget-none", &chain(), &[]).await;
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        outcome["stats"]["tokens"]["writer"]["calls"], 3,
        "{outcome}"
    );
}

/// Prompt tokens of `bodies` as the scripted server counts them: the words of every message.
fn prompt_words(bodies: &[Value]) -> u64 {
    bodies
        .iter()
        .flat_map(|body| body["messages"].as_array().unwrap().iter())
        .map(|m| m["content"].as_str().unwrap().split_whitespace().count() as u64)
        .sum()
}

/// `llm` kinds on the scripted server (model `m`): `brief` (planner, two handler types,
/// review, synthesis), `fix` (a JSON handler whose first reply is invalid) and `short` (a text
/// handler and a synthesis).
fn llm_kinds_file(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-acct-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[providers.scripted]
base_url = "http://127.0.0.1:{port}/v1"

[models.m]
provider = "scripted"
model = "scripted-1"
temperature = 0
price_per_million_input = 1.0

[kinds.brief.planner]
type = "llm"
model = "m"
prompt = "{{{{ task.input.marker }}}} Topic: {{{{ task.input.topic }}}}"

[kinds.brief.handlers.researcher]
type = "llm"
model = "m"
prompt = "Research: {{{{ subtask.input.requirements }}}}"

[kinds.brief.handlers.writer]
type = "llm"
model = "m"
prompt = "Write {{{{ subtask.input.title }}}}{{% if subtask.input.feedback %}} Reviewer: {{{{ subtask.input.feedback }}}}{{% endif %}}"

[kinds.brief.review]
type = "llm"
model = "m"
prompt = "[review] round={{{{ round }}}}"

[kinds.brief.synthesis]
type = "llm"
model = "m"
prompt = "Assemble:{{% for o in outputs %}} [{{{{ o.id }}}}]{{% endfor %}}"

[kinds.fix.handlers.default]
type = "llm"
model = "m"
output = "json"
prompt = "[json:repair] {{{{ subtask.input }}}}"

[kinds.short.handlers.default]
type = "llm"
model = "m"
prompt = "Say {{{{ subtask.input }}}}"

[kinds.short.synthesis]
type = "llm"
model = "m"
prompt = "Assemble{{% for o in outputs %}} {{{{ o.output }}}}{{% endfor %}}"
"#
    );
    let path = dir.join("kinds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (bounded) until child `index` exits: a failpoint was hit.
async fn crashed(env: &mut TestEnv, index: usize, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.is_running(index) {
        assert!(std::time::Instant::now() < deadline, "{what} never hit");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The outcome of task `id` once it has one (polled through `chorus result`).
async fn outcome_of(env: &TestEnv, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, stdout) = env.cli(&["result", id]).await;
        if let Ok(outcome) = serde_json::from_str::<Value>(&stdout) {
            if outcome.get("status").is_some() {
                return outcome;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no outcome for {id}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_review_and_synthesis_calls_count_once_though_each_service_crashes_after_its_write() {
    let server = scripted();
    let mut env = TestEnv::new("acctcrash").await;
    let path = llm_kinds_file(server.port);
    let file = path.to_str().unwrap();
    let lease = ["--kinds-file", file, "--lease-ms", "1000"];
    let abort = |point: &str| [("CHORUS_FAILPOINTS", format!("{point}=abort"))];
    let vars = abort("orchestrator.after-plan-recorded");
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let orchestrator = env.spawn_with("chorus-orchestrator", &lease, &vars);
    env.spawn(
        "chorus-worker",
        &["--kinds-file", file, "--types", "researcher,writer"],
    );
    let vars = abort("synthesizer.after-review-published");
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let synthesizer = env.spawn_with("chorus-synthesizer", &lease, &vars);
    let input = json!({"marker": "[plan:deps]", "topic": "agents"}).to_string();
    let args = [
        "submit",
        "--kind",
        "brief",
        "--id",
        "acct-1",
        "--input",
        &input,
        "--max-rounds",
        "2",
    ];
    let (code, out) = env.cli(&args).await;
    assert_eq!(code, 0, "{out}");

    // The orchestrator dies once the plan (and its usage) is recorded; its successor resumes
    // publishing without planning again.
    crashed(&mut env, orchestrator, "orchestrator.after-plan-recorded").await;
    env.spawn("chorus-orchestrator", &lease);
    // A synthesizer dies once the review's round (and its usage) is recorded, the next once the
    // outcome (and the synthesis' usage) is stored; the last one delivers it.
    crashed(&mut env, synthesizer, "synthesizer.after-review-published").await;
    let vars = abort("synthesizer.after-store-outcome");
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let synthesizer = env.spawn_with("chorus-synthesizer", &lease, &vars);
    crashed(&mut env, synthesizer, "synthesizer.after-store-outcome").await;
    env.spawn("chorus-synthesizer", &lease);
    let outcome = outcome_of(&env, "acct-1").await;
    assert_eq!(outcome["status"], "succeeded", "{outcome}");

    // Plan, research, draft, review, redone draft, synthesis: six calls made, six counted.
    let bodies = requests(server.port).await;
    assert_eq!(bodies.len(), 6, "{bodies:?}");
    let tokens = &outcome["stats"]["tokens"]["m"];
    assert_eq!(tokens["calls"], 6, "{outcome}");
    assert_eq!(tokens["prompt"], prompt_words(&bodies), "{outcome}");
    assert_eq!(
        outcome["stats"]["cost"].as_f64().unwrap(),
        prompt_words(&bodies) as f64 / 1e6,
        "{outcome}"
    );
    let (_, status) = env.cli(&["status", "acct-1"]).await;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tokens"], outcome["stats"]["tokens"], "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_plans_failed_handlers_and_spent_budgets_count_every_paid_call() {
    let server = scripted();
    let mut env = TestEnv::new("acctfail").await;
    let path = llm_kinds_file(server.port);
    let file = path.to_str().unwrap();
    env.spawn("chorus-orchestrator", &["--kinds-file", file]);
    env.spawn("chorus-worker", &["--kinds-file", file]);
    env.spawn("chorus-synthesizer", &["--kinds-file", file]);
    let submit = |kind: &'static str, id: &'static str, input: Value, extra: Vec<&'static str>| {
        let env = &env;
        async move {
            let input = input.to_string();
            let mut args = vec![
                "submit", "--kind", kind, "--id", id, "--input", &input, "--wait",
            ];
            args.extend(extra);
            let (code, stdout) = env.cli(&args).await;
            let outcome: Value =
                serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{code}: {stdout}"));
            (code, outcome)
        }
    };

    // An invalid plan, then an invalid repair: rejected, and both paid calls counted — the
    // planner is not run a second time after the claim.
    let input = json!({"marker": "[plan:invalid]", "topic": "x"});
    let (code, outcome) = submit("brief", "acct-invalid", input, vec![]).await;
    assert_eq!(code, 3, "{outcome}");
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    let bodies = requests(server.port).await;
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(outcome["stats"]["tokens"]["m"]["calls"], 2, "{outcome}");
    assert_eq!(
        outcome["stats"]["tokens"]["m"]["prompt"],
        prompt_words(&bodies),
        "{outcome}"
    );

    // The first reply (6 tokens) spends a budget of 3: the repair call is refused, the handler
    // fails, and its one paid call is counted.
    let (_, outcome) = submit(
        "fix",
        "acct-fix",
        json!({"items": ["x"]}),
        vec!["--max-tokens", "3"],
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert!(
        outcome["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("token budget exceeded"),
        "{outcome}"
    );
    assert_eq!(requests(server.port).await.len(), 3);
    assert_eq!(outcome["stats"]["tokens"]["m"]["calls"], 1, "{outcome}");

    // The handler's call (5 tokens) spends a budget of 3: no synthesis call starts.
    let (_, outcome) = submit(
        "short",
        "acct-short",
        json!({"items": ["x"]}),
        vec!["--max-tokens", "3", "--on-failure", "continue"],
    )
    .await;
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let errors = outcome["errors"].to_string();
    assert!(
        errors.contains("synthesis failed: token budget exceeded"),
        "{outcome}"
    );
    assert_eq!(requests(server.port).await.len(), 4);
    assert_eq!(outcome["stats"]["tokens"]["m"]["calls"], 1, "{outcome}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_answers_usage_is_counted_with_the_rejection() {
    let mut env = TestEnv::new("usagerefused").await;
    start(&mut env);
    let input = json!({"plan_error": "no plan for you",
                       "usage": [usage("planner", 30, 5, Some(0.125))]});
    let (code, outcome) = run(&env, "usage-refused", &input, &[]).await;
    assert_eq!(code, 3, "{outcome}");
    assert_eq!(outcome["status"], "rejected", "{outcome}");
    assert_eq!(
        outcome["stats"]["tokens"]["planner"],
        json!({"prompt": 30, "completion": 5, "cached": 1, "calls": 1, "cache_hits": 0}),
        "{outcome}"
    );
    assert_eq!(outcome["stats"]["cost"], json!(0.125), "{outcome}");
    let (_, status) = env.cli(&["status", "usage-refused"]).await;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tokens"], outcome["stats"]["tokens"], "{status}");
}
