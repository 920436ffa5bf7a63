//! The README's LLM examples, run as a user would: `examples/kinds/llm.toml` unchanged, given
//! to the three services, pointed at an endpoint by the two environment variables the README
//! names (`OPENAI_BASE_URL`, `OPENAI_API_KEY`). The endpoint is the SCRIPTED test server
//! tests/fixtures/llm/scripted_server.py (canned completions, not a model): the examples'
//! prompts carry no markers, so it answers plans and verdicts made from the JSON Schemas the
//! step sends, and echoes everything else.
#![allow(clippy::unwrap_used)]

use chorus_tests::servers::{scripted, scripted_requests as requests};
use chorus_tests::{repo_dir, TestEnv};
use serde_json::{json, Value};

/// What the scripted server asks a redone subtask to add (scripted_server.py `FEEDBACK`).
const FEEDBACK: &str = "SCRIPTED-FEEDBACK: add figures";

/// The user message of a request.
fn prompt(body: &Value) -> &str {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap()
}

async fn submit(env: &TestEnv, kind: &str, input: &Value) -> Value {
    let input = input.to_string();
    let args = [
        "submit",
        "--kind",
        kind,
        "--input",
        &input,
        "--max-rounds",
        "2",
        "--wait",
    ];
    let (code, stdout) = env.cli(&args).await;
    let outcome: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout}"));
    assert_eq!(code, 0, "{outcome}");
    outcome
}

/// `models` were used, and the task was priced.
fn assert_priced(outcome: &Value, models: &[&str]) {
    for model in models {
        let tokens = &outcome["stats"]["tokens"][model];
        assert!(tokens["calls"].as_u64().unwrap() > 0, "{model}: {outcome}");
        assert!(tokens["prompt"].as_u64().unwrap() > 0, "{model}: {outcome}");
    }
    assert!(
        outcome["stats"]["cost"].as_f64().unwrap() > 0.0,
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_llm_examples_run_unchanged_against_an_endpoint_named_by_two_variables() {
    let server = scripted();
    let mut env = TestEnv::new("llmexamples").await;
    let file = repo_dir().join("examples/kinds/llm.toml");
    let file = file.to_str().unwrap();
    let base_url = format!("http://127.0.0.1:{}/v1", server.port);
    let vars = [
        ("OPENAI_BASE_URL", base_url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
    ];
    env.spawn_with("chorus-orchestrator", &["--kinds-file", file], &vars);
    let types = "writer,researcher,specialist";
    env.spawn_with(
        "chorus-worker",
        &["--kinds-file", file, "--types", types],
        &vars,
    );
    env.spawn_with("chorus-synthesizer", &["--kinds-file", file], &vars);

    // llm-report: the planner's sections drafted by writers, one sent back by the reviewer
    // with feedback its redone prompt carries, the report assembled by the synthesizer.
    let outcome = submit(&env, "llm-report", &json!({"topic": "agentic AI systems"})).await;
    assert_priced(&outcome, &["fast", "strong"]);
    let report = outcome["output"].as_str().unwrap();
    assert!(
        report.starts_with("echo: Topic: agentic AI systems"),
        "{report}"
    );
    assert!(report.contains("--- section writer-2 ---"), "{report}");
    assert!(report.contains(FEEDBACK), "{report}");
    let sent = requests(server.port).await;
    let plan = &sent[0];
    assert_eq!(plan["model"], "gpt-4o", "{plan}");
    assert!(prompt(plan).starts_with("Plan a report on: agentic AI systems."));
    let redone: Vec<&Value> = sent
        .iter()
        .filter(|b| {
            let p = prompt(b);
            p.starts_with("Section:")
                && p.contains(&format!("A reviewer asked for changes: {FEEDBACK}"))
        })
        .collect();
    assert_eq!(redone.len(), 1, "{redone:?}");
    assert_eq!(redone[0]["model"], "gpt-4o-mini");

    // market-analysis: specialists build on the researchers' findings.
    let before = requests(server.port).await.len();
    let input = json!({"product": "a budgeting app for students"});
    let outcome = submit(&env, "market-analysis", &input).await;
    assert_priced(&outcome, &["fast", "strong"]);
    let analysis = outcome["output"].as_str().unwrap();
    assert!(
        analysis.starts_with("echo: Product: a budgeting app for students"),
        "{analysis}"
    );
    let sent = requests(server.port).await;
    let specialists: Vec<&str> = sent[before..]
        .iter()
        .map(prompt)
        .filter(|p| p.starts_with("Analysis: specialist part"))
        .collect();
    assert_eq!(specialists.len(), 2, "{specialists:?}");
    for p in specialists {
        assert!(p.contains("Research researcher-1:\necho: Research:"), "{p}");
        assert!(p.contains("Research researcher-2:"), "{p}");
    }
}
