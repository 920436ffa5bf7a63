//! Unit tests of the `llm` step's templates, schemas and review conversion.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::prompt::Templates;
use super::schema::Schema;
use super::{origin, review_answer};

#[test]
fn templates_render_the_request_and_tolerate_missing_fields() {
    let templates = Templates::build(
        Some("You write {{ task.kind }} sections."),
        "Section {{ subtask.input.title }}.{% for d in dependencies %} [{{ d.id }}: {{ d.output }}]{% endfor %}{% if subtask.input.feedback %} Reviewer: {{ subtask.input.feedback }}{% endif %}",
    )
    .unwrap();
    let request = json!({
        "step": "handle",
        "task": {"id": "t", "kind": "report"},
        "subtask": {"id": "s1", "input": {"title": "Intro"}},
        "dependencies": [{"id": "s0", "output": "outline"}],
    });
    let (system, prompt) = templates.render(&request).unwrap();
    assert_eq!(system.as_deref(), Some("You write report sections."));
    assert_eq!(prompt, "Section Intro. [s0: outline]");
    let mut redo = request.clone();
    redo["subtask"]["input"]["feedback"] = json!("too short");
    assert!(templates
        .render(&redo)
        .unwrap()
        .1
        .ends_with("Reviewer: too short"));
    // A field the request lacks renders empty, even through a chain.
    let (_, prompt) = Templates::build(None, "[{{ nothing.at.all }}]")
        .unwrap()
        .render(&json!({}))
        .unwrap();
    assert_eq!(prompt, "[]");
}

#[test]
fn template_syntax_errors_name_the_key() {
    let error = Templates::build(None, "{% for x in %}").unwrap_err();
    assert_eq!(error.key, "prompt");
    assert!(error.message.contains("template error"), "{error}");
    let error = Templates::build(Some("{{ unclosed"), "fine").unwrap_err();
    assert_eq!(error.key, "system");
}

#[test]
fn plan_schema_accepts_a_plan_and_names_what_is_wrong() {
    let schema = Schema::plan(&["writer".to_owned(), "researcher".to_owned()]).unwrap();
    let plan = json!({"subtasks": [
        {"id": "a", "worker_type": "researcher", "input": {"requirements": "r"}, "depends_on": []},
        {"id": "b", "worker_type": "writer", "input": {}, "depends_on": ["a"]},
    ]});
    assert_eq!(schema.check(&plan.to_string()).unwrap(), plan);
    // A Markdown fence around it is tolerated.
    let fenced = format!("```json\n{plan}\n```");
    assert_eq!(schema.check(&fenced).unwrap(), plan);
    let bad =
        json!({"subtasks": [{"id": "a", "worker_type": "poet", "input": {}, "depends_on": []}]});
    let problem = schema.check(&bad.to_string()).unwrap_err();
    assert!(problem.contains("/subtasks/0/worker_type"), "{problem}");
    assert!(schema.check("no json").unwrap_err().contains("not JSON"));
    let missing = json!({"subtasks": [{"id": "a", "worker_type": "writer"}]});
    assert!(schema
        .check(&missing.to_string())
        .unwrap_err()
        .contains("input"));
}

#[test]
fn a_verdict_becomes_the_contracts_review_answer() {
    let request = json!({"subtasks": [
        {"id": "s1", "worker_type": "writer", "depends_on": ["s0"], "input": {"title": "Intro"}},
    ]});
    let verdict = json!({"accept": false, "redo": [{"id": "s1", "feedback": "more detail"}]});
    assert_eq!(
        review_answer(&verdict, &request),
        json!({"accept": false, "subtasks": [
            {"id": "s1", "worker_type": "writer", "depends_on": ["s0"],
             "input": {"title": "Intro", "feedback": "more detail"}}
        ]})
    );
    assert_eq!(
        review_answer(&json!({"accept": true}), &request),
        json!({"accept": true})
    );
    let schema = Schema::review().unwrap();
    assert!(schema.check(r#"{"accept": "yes"}"#).is_err());
}

#[test]
fn a_steps_origin_names_its_attempt_or_run_so_only_its_own_redo_shares_it() {
    let handle =
        json!({"step": "handle", "task": {"id": "t"}, "subtask": {"id": "s1"}, "attempt": 2});
    assert_eq!(origin(&handle), "t/s1/2");
    let review = json!({"step": "review", "task": {"id": "t"}, "round": 1});
    assert_eq!(origin(&review), "t/review/1");
    assert_eq!(
        origin(&json!({"step": "plan", "task": {"id": "t"}})),
        "t/plan"
    );
    assert_eq!(
        origin(&json!({"step": "synthesize", "task": {"id": "t"}})),
        "t/synthesize"
    );
}
