//! Unit tests of publishing: batch packing, result batch bodies, child task ids.

use super::*;
use crate::protocol::{ResultBatch, TaskOptions};

fn entry(id: &str, bytes: usize, depth: u32) -> PlanEntry {
    PlanEntry {
        id: id.to_owned(),
        worker_type: "default".into(),
        depends_on: Vec::new(),
        depth,
        payload: ByteBuf::from(vec![0; bytes]),
        child: None,
    }
}

fn sizes(packed: &[Packed<'_>]) -> Vec<usize> {
    packed
        .iter()
        .map(|p| match p {
            Packed::One(_) => 1,
            Packed::Many(batch) => batch.items.len(),
        })
        .collect()
}

#[test]
fn packing_cuts_by_count_bytes_and_depth() {
    let options = TaskOptions {
        batch_size: Some(3),
        ..TaskOptions::default()
    }
    .resolve()
    .expect("valid options");
    let context = TaskContext {
        task: "t",
        kind: "k",
        options: &options,
        created_ms: 0,
        max_message_bytes: 4096,
        round: 1,
        fingerprint: None,
    };
    let small: Vec<PlanEntry> = (0..7).map(|i| entry(&i.to_string(), 10, 0)).collect();
    let refs: Vec<&PlanEntry> = small.iter().collect();
    assert_eq!(sizes(&pack(context, &refs)), [3, 3, 1]);
    // A quarter of 4096 bytes holds two of these, not three.
    let big: Vec<PlanEntry> = (0..4).map(|i| entry(&i.to_string(), 400, 0)).collect();
    let refs: Vec<&PlanEntry> = big.iter().collect();
    assert_eq!(sizes(&pack(context, &refs)), [2, 2]);
    let mixed = [entry("a", 1, 0), entry("b", 1, 1), entry("c", 1, 1)];
    let refs: Vec<&PlanEntry> = mixed.iter().collect();
    assert_eq!(sizes(&pack(context, &refs)), [1, 2]);
}

#[test]
fn a_result_batch_body_decodes_as_a_result_batch() {
    let results: Vec<ResultMessage> = (0..3)
        .map(|i| ResultMessage {
            task: "t".into(),
            subtask: i.to_string(),
            attempts: 1,
            outcome: protocol::SubtaskOutcome::Succeeded(ByteBuf::from(vec![i; 3])),
            spawned: Vec::new(),
            round: 1,
            usage: Vec::new(),
        })
        .collect();
    let encoded: Vec<Vec<u8>> = results
        .iter()
        .map(|r| protocol::encode(r).expect("encodes"))
        .collect();
    let body = result_batch_body(&encoded).expect("encodes");
    let decoded: ResultBatch = protocol::decode(&body).expect("decodes");
    assert_eq!(decoded.results, results);
    assert_eq!(
        body,
        protocol::encode(&ResultBatch { results }).expect("encodes")
    );
}

#[test]
fn child_ids_are_valid_task_ids() {
    assert_eq!(child_task_id("t", "3", 1), "t/3");
    assert_eq!(child_task_id("t", "3", 2), "t/3~r2");
    let long = child_task_id(&"t".repeat(150), &"s".repeat(150), 1);
    assert!(protocol::validate_task_id(&long).is_ok(), "{long}");
    assert_ne!(long, child_task_id(&"t".repeat(150), &"x".repeat(150), 1));
    assert_ne!(long, child_task_id(&"t".repeat(150), &"s".repeat(150), 2));
}
