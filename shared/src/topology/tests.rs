//! Unit tests of the topology: delay buckets and queue names.

use super::*;

#[test]
fn delays_map_to_the_smallest_covering_bucket() {
    assert_eq!(delay_queue_for(Duration::from_millis(0)), "chorus.wait.100");
    assert_eq!(
        delay_queue_for(Duration::from_millis(100)),
        "chorus.wait.100"
    );
    assert_eq!(
        delay_queue_for(Duration::from_millis(101)),
        "chorus.wait.200"
    );
    assert_eq!(
        delay_queue_for(Duration::from_millis(1500)),
        "chorus.wait.1600"
    );
}

#[test]
fn declared_buckets_cover_the_maximum_delay() {
    let buckets = delay_queues_up_to(Duration::from_secs(60));
    assert_eq!(buckets.first().map(|b| b.1), Some(100));
    assert_eq!(
        buckets.last().map(|b| b.0.as_str()),
        Some("chorus.wait.102400")
    );
    assert_eq!(buckets.len(), 11);
    assert_eq!(delay_queues_up_to(Duration::from_secs(1)).len(), 11);
}

#[test]
fn worker_types_have_their_own_queue() {
    assert_eq!(subtask_queue("default"), "chorus.subtasks");
    assert_eq!(subtask_queue("gpu"), "chorus.subtasks.gpu");
}
