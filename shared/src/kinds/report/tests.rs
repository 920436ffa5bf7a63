//! Unit tests of `report`: plan shape, review, assembled document.

use super::*;

#[test]
fn the_plan_has_writers_and_an_editor_after_them() {
    let plan = Report
        .plan(&ReportInput {
            topic: "Chorus".into(),
            sections: vec![],
            weak: None,
        })
        .expect("plan");
    assert_eq!(plan.0.len(), 5);
    let summary = plan.0.last().expect("summary");
    assert_eq!(summary.worker_type.as_deref(), Some(EDITOR));
    assert_eq!(summary.depends_on.len(), 4);
    assert!(plan.0[..4]
        .iter()
        .all(|p| p.worker_type.as_deref() == Some(WRITER)));
}

#[test]
fn weak_drafts_fail_the_review_and_rewrites_pass() {
    let short = write_section("X", "Design", true, None);
    assert!(short.split_whitespace().count() < MIN_SECTION_WORDS);
    let long = write_section("X", "Design", true, Some("expand"));
    assert!(long.split_whitespace().count() >= MIN_SECTION_WORDS);
    assert!(
        write_section("X", "Design", false, None)
            .split_whitespace()
            .count()
            >= MIN_SECTION_WORDS
    );
}
