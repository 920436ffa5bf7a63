//! Unit tests of what a handler sees and spawns.

use serde_bytes::ByteBuf;

use super::*;
use crate::{kinds::Work, protocol};

fn context_with(dependencies: Vec<(&str, Vec<u8>)>) -> HandlerContext {
    HandlerContext {
        dependencies: dependencies
            .into_iter()
            .map(|(id, bytes)| (id.to_owned(), ByteBuf::from(bytes)))
            .collect(),
        ..HandlerContext::default()
    }
}

#[test]
fn dependency_outputs_decode_in_order() {
    let context = context_with(vec![
        ("b", protocol::encode(&2_u32).expect("encodes")),
        ("a", protocol::encode(&1_u32).expect("encodes")),
    ]);
    let outputs: Vec<(String, u32)> = context.dependency_outputs().expect("decodes");
    assert_eq!(outputs, [("b".to_owned(), 2), ("a".to_owned(), 1)]);
}

#[test]
fn a_dependency_output_that_does_not_decode_is_fatal() {
    let context = context_with(vec![("up", b"\xc1".to_vec())]);
    let error = context.dependency_outputs::<u32>().expect_err("bad output");
    assert!(!error.is_retryable());
    assert!(
        error
            .message()
            .starts_with("output of dependency up does not decode: "),
        "{error}"
    );
}

#[test]
fn spawned_subtasks_are_encoded_and_taken_once() {
    let context = HandlerContext::default();
    context
        .spawn(Planned::new(5_u32).id("five"))
        .expect("encodes");
    let clone = context.clone();
    clone.spawn(Planned::new(6_u32)).expect("encodes");
    let spawned = context.spawned.take();
    assert_eq!(spawned.len(), 2, "clones share one list");
    assert_eq!(spawned[0].id.as_deref(), Some("five"));
    match &spawned[1].work {
        Work::Handler(bytes) => assert_eq!(protocol::decode::<u32>(bytes).expect("decodes"), 6),
        Work::Child(_) => panic!("a handler subtask"),
    }
    assert!(context.spawned.take().is_empty());
}
