//! Which acks go out together: the pure grouping of [`plan`].

use std::collections::BTreeSet;

use super::plan;

fn set(tags: &[u64]) -> BTreeSet<u64> {
    tags.iter().copied().collect()
}

#[test]
fn a_run_from_the_lowest_unacked_goes_as_one_multiple_ack() {
    let mut unacked = set(&[4, 5, 6, 9]);
    let (multiple, alone) = plan(&mut unacked, &set(&[4, 5, 6]));
    assert_eq!(multiple, Some(6));
    assert!(alone.is_empty());
    assert_eq!(unacked, set(&[9]));
}

#[test]
fn a_settled_delivery_behind_an_unsettled_one_is_acked_alone() {
    // 3 still runs: a multiple ack at 5 would ack it too.
    let mut unacked = set(&[3, 4, 5]);
    let (multiple, alone) = plan(&mut unacked, &set(&[4, 5]));
    assert_eq!(multiple, None);
    assert_eq!(alone, vec![4, 5]);
    assert_eq!(unacked, set(&[3]));
}

#[test]
fn the_run_stops_at_the_first_unsettled_delivery() {
    let mut unacked = set(&[1, 2, 3, 4, 7]);
    let (multiple, alone) = plan(&mut unacked, &set(&[1, 2, 4, 7]));
    assert_eq!(multiple, Some(2));
    assert_eq!(alone, vec![4, 7]);
    assert_eq!(unacked, set(&[3]));
}

#[test]
fn a_lone_delivery_is_acked_alone() {
    let mut unacked = set(&[8, 9]);
    let (multiple, alone) = plan(&mut unacked, &set(&[8]));
    assert_eq!(multiple, None);
    assert_eq!(alone, vec![8]);
    assert_eq!(unacked, set(&[9]));
}
