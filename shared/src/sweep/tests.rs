//! Unit tests of the sweeper's rule; the sweep itself runs against a real Redis in
//! `tests/tests/sweep.rs`.

use super::is_stuck;

#[test]
fn only_a_running_task_with_pending_subtasks_and_no_progress_long_enough_is_stuck() {
    assert!(is_stuck("running", 1, 1000, 1000));
    assert!(!is_stuck("running", 1, 999, 1000), "not long enough");
    assert!(!is_stuck("running", 0, 5000, 1000), "nothing pending");
    assert!(
        !is_stuck("planning", 3, 5000, 1000),
        "planning is the orchestrator's"
    );
    assert!(!is_stuck("", 3, 5000, 1000), "gone or finished");
}
