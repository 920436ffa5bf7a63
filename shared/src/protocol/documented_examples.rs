//! The examples of `docs/protocol.md` decode to what the document says they are.

use super::*;

const DOC: &str = include_str!("../../../docs/protocol.md");

fn example(name: &str) -> &'static str {
    let marker = format!("<!-- example: {name} -->");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in docs/protocol.md"));
    let after = &DOC[start + marker.len()..];
    let fence = after.find("```").expect("opening fence");
    let body = &after[fence..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).expect("hex byte"))
        .collect()
}

#[test]
fn msgpack_request_example_decodes() {
    let request: TaskRequest = Encoding::Msgpack
        .decode(&hex(example("msgpack-request")))
        .expect("decode");
    assert_eq!(request.kind, "range-sum");
    assert_eq!(request.id.as_deref(), Some("demo-1"));
    let options = request.options.expect("options").resolve().expect("valid");
    assert_eq!(options.on_failure, OnFailure::Continue);
    assert_eq!(options.timeout_ms, 10_000);
    assert_eq!(
        serde_json::to_value(&request.input).expect("json"),
        serde_json::json!({"start": 0, "end": 100, "parts": 4})
    );
}

#[test]
fn msgpack_outcome_example_decodes() {
    let outcome: Outcome = Encoding::Msgpack
        .decode(&hex(example("msgpack-outcome")))
        .expect("decode");
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.stats.subtasks, 4);
    assert_eq!(
        serde_json::to_value(&outcome.output).expect("json"),
        serde_json::json!({"sum": 4950, "parts": 4})
    );
}

#[test]
fn json_examples_decode() {
    let request: TaskRequest = Encoding::Json
        .decode(example("json-request").as_bytes())
        .expect("request");
    assert_eq!(request.id, None);
    assert!(request.options.expect("options").resolve().is_ok());
    let outcome: Outcome = Encoding::Json
        .decode(example("json-outcome").as_bytes())
        .expect("outcome");
    assert_eq!(outcome.status, Status::Partial);
    assert_eq!(outcome.errors[0].subtask.as_deref(), Some("1"));
}
