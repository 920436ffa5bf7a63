//! Unit tests of the type erasure: plan entries, error messages, panics caught.

use serde::{Deserialize, Serialize};

use super::*;
use crate::kinds::{Plan, Registry};

/// A kind that doubles numbers: its plan names nothing, its review adds one unnamed subtask.
struct Double;

#[derive(Serialize, Deserialize)]
struct Numbers {
    values: Vec<i64>,
}

impl Kind for Double {
    type Input = Numbers;
    type Subtask = i64;
    type Output = i64;
    type Final = i64;

    fn name(&self) -> &str {
        "double"
    }

    fn plan(&self, input: &Numbers) -> Result<Plan<i64>, KindError> {
        Ok(input.values.clone().into())
    }

    async fn handle(&self, value: i64, _context: HandlerContext) -> Result<i64, KindError> {
        Ok(value * 2)
    }

    fn synthesize(&self, _input: &Numbers, outputs: Vec<(String, i64)>) -> Result<i64, KindError> {
        Ok(outputs.iter().map(|(_, value)| value).sum())
    }

    fn review(
        &self,
        _input: &Numbers,
        _outputs: &[(String, i64)],
        round: u32,
    ) -> Result<Review<i64>, KindError> {
        Ok(Review::Revise(vec![
            Planned::new(i64::from(round)),
            Planned::new(0).id("kept"),
        ]))
    }
}

fn double() -> Arc<dyn DynKind> {
    Registry::new()
        .with(Double)
        .get("double")
        .expect("registered")
}

fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    protocol::encode(value).expect("encodes")
}

#[test]
fn unnamed_subtasks_get_their_position_and_the_default_worker_type() {
    let entries = to_entries(
        vec![
            Planned::new(1_i64),
            Planned::new(2).id("named").on("gpu").after(["0"]),
            Planned::new(3),
        ],
        "p.",
        2,
    )
    .expect("encodes");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["p.0", "named", "p.2"]);
    assert_eq!(entries[0].worker_type, protocol::DEFAULT_WORKER_TYPE);
    assert_eq!(entries[1].worker_type, "gpu");
    assert_eq!(entries[1].depends_on, ["0"]);
    assert!(entries.iter().all(|e| e.depth == 2 && e.child.is_none()));
    assert_eq!(
        protocol::decode::<i64>(&entries[2].payload).expect("decodes"),
        3
    );
}

#[test]
fn a_child_entry_has_no_payload() {
    let child =
        Planned::<i64>::child("range-sum", &Numbers { values: vec![1] }, None).expect("encodes");
    let entries = to_entries(vec![child], "", 0).expect("encodes");
    assert!(entries[0].payload.is_empty());
    let spec = entries[0].child.as_ref().expect("a child");
    assert_eq!(spec.kind, "range-sum");
}

#[tokio::test]
async fn an_erased_kind_plans_handles_and_synthesizes_bytes() {
    let kind = double();
    assert_eq!(kind.name(), "double");
    assert!(!kind.inline());
    assert!(!kind.inline_plan(&encoded(&Numbers { values: vec![1] })));
    let entries = kind
        .plan(&view(), &encoded(&Numbers { values: vec![4, 5] }))
        .expect("plans");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["0", "1"]);
    let output = kind
        .handle(&entries[1].payload, HandlerContext::default())
        .await
        .expect("handles");
    assert_eq!(protocol::decode::<i64>(&output).expect("decodes"), 10);
    let outputs = vec![("0".to_owned(), encoded(&8_i64)), ("1".to_owned(), output)];
    let input = encoded(&Numbers { values: vec![4, 5] });
    let combined = kind
        .synthesize(&view(), &input, outputs, &[])
        .expect("synthesizes");
    assert_eq!(combined, rmpv::Value::from(18));
}

#[test]
fn a_review_names_its_additions_after_the_round() {
    let input = encoded(&Numbers { values: vec![] });
    let entries = double()
        .review(&view(), &input, &[], 3)
        .expect("reviews")
        .expect("revises");
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["r3.0", "kept"]);
}

#[tokio::test]
async fn what_does_not_decode_is_a_fatal_error_that_says_what() {
    let kind = double();
    let plan = kind.plan(&view(), b"\xc1").expect_err("no input");
    assert!(!plan.is_retryable());
    assert!(plan.message().starts_with("invalid input: "), "{plan}");
    let handle = kind
        .handle(b"\xc1", HandlerContext::default())
        .await
        .expect_err("no subtask");
    assert!(
        handle.message().starts_with("invalid subtask: "),
        "{handle}"
    );
    let input = encoded(&Numbers { values: vec![] });
    let outputs = vec![("7".to_owned(), b"\xc1".to_vec())];
    let synthesis = kind
        .synthesize(&view(), &input, outputs, &[])
        .expect_err("no output");
    assert!(
        synthesis
            .message()
            .starts_with("output of subtask 7 does not decode: "),
        "{synthesis}"
    );
}

#[tokio::test]
async fn kind_code_panics_come_back_as_text_inline_or_not() {
    for inline in [true, false] {
        assert_eq!(run_kind_code(inline, || 7).await, Ok(7));
        let panicked = run_kind_code(inline, || -> u32 { panic!("boom {}", 1) }).await;
        assert_eq!(panicked, Err("boom 1".to_owned()));
    }
}

#[test]
fn panic_text_reads_str_and_string_payloads() {
    assert_eq!(panic_text(&"static"), "static");
    assert_eq!(panic_text(&"owned".to_owned()), "owned");
    assert_eq!(panic_text(&42_u8), "non-text panic payload");
}

#[test]
fn subtask_ids_sort_numbers_first_by_value() {
    let mut items: Vec<(String, ())> = ["10", "b", "2", "a", "0"]
        .iter()
        .map(|id| ((*id).to_owned(), ()))
        .collect();
    sort_by_subtask_id(&mut items);
    let ids: Vec<&str> = items.iter().map(|(id, ())| id.as_str()).collect();
    assert_eq!(ids, ["0", "2", "10", "a", "b"]);
}

/// The task view the tests' calls pass (Rust kinds ignore it).
fn view() -> super::TaskView {
    super::TaskView {
        id: "t".to_owned(),
        kind: "double".to_owned(),
        options: protocol::TaskOptions::default()
            .resolve()
            .expect("defaults resolve"),
        usage: crate::usage::UsageMeter::default(),
        budget: None,
        subtasks: Vec::new(),
    }
}
