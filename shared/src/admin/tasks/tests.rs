//! Unit tests of the index's entries and filters (the index itself is tested against Redis in
//! tests/tests/admin.rs).

#![allow(clippy::unwrap_used)]

use super::*;

fn summary(status: &str, finished: bool) -> TaskSummary {
    TaskSummary {
        id: "t".into(),
        kind: "k".into(),
        status: status.into(),
        submitted_ms: 1,
        finished_ms: finished.then_some(2),
        settled: None,
        subtasks: None,
    }
}

#[test]
fn running_takes_every_task_without_an_outcome() {
    let filter = Filter {
        status: Some("running".into()),
        kind: None,
        limit: 10,
    };
    assert!(matches(&filter, &summary("planning", false)));
    assert!(matches(&filter, &summary("running", false)));
    assert!(!matches(&filter, &summary("succeeded", true)));
    let failed = Filter {
        status: Some("failed".into()),
        ..filter
    };
    assert!(matches(&failed, &summary("failed", true)));
    assert!(!matches(&failed, &summary("succeeded", true)));
}

#[test]
fn an_entry_as_the_script_writes_it_decodes() {
    // cjson writes 13-digit millisecond times as integers ("%.14g").
    let entry: Entry = serde_json::from_str(
        r#"{"kind":"range-sum","status":"live","submitted_ms":1764480000000}"#,
    )
    .unwrap();
    assert_eq!(entry.submitted_ms, 1_764_480_000_000);
    assert_eq!(entry.finished_ms, None);
}

#[test]
fn times_print_as_rfc3339_utc() {
    assert_eq!(rfc3339(1_764_503_223_456), "2025-11-30T11:47:03Z");
}
