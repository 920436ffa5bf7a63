//! Tokens and cost through the real services: steps' `usage` summed exactly once per model into
//! the outcome's `stats` and `chorus status`, failed attempts included, and the `max_tokens`
//! budget (docs/kinds.md#usage).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

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
