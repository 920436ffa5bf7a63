//! Unit tests of `range-sum`: slicing, plans, reviews, sums.

use super::*;

fn input(start: i64, end: i64, parts: u32) -> RangeSumInput {
    RangeSumInput {
        start,
        end,
        parts,
        ..RangeSumInput::default()
    }
}

fn slices(plan: Plan<Slice>) -> Vec<Slice> {
    plan.into_subtasks()
}

#[test]
fn peak_overlap_counts_concurrent_intervals() {
    assert_eq!(peak_overlap(&[(0, 10), (5, 15), (10, 20)]), 2);
    assert_eq!(peak_overlap(&[(0, 1), (1, 2)]), 1);
    assert_eq!(peak_overlap(&[]), 0);
}

#[test]
fn chains_and_types_shape_the_plan() {
    let plan = RangeSum
        .plan(&RangeSumInput {
            chain: true,
            types: vec!["a".into(), "b".into()],
            after: vec![[2, 0]],
            ..input(0, 10, 3)
        })
        .expect("plan");
    let deps: Vec<Vec<String>> = plan.0.iter().map(|p| p.depends_on.clone()).collect();
    assert_eq!(
        deps,
        vec![vec![], vec!["0".to_owned()], vec!["1".into(), "0".into()]]
    );
    let types: Vec<Option<String>> = plan.0.iter().map(|p| p.worker_type.clone()).collect();
    assert_eq!(
        types,
        vec![Some("a".into()), Some("b".into()), Some("a".into())]
    );
}

#[test]
fn slices_cover_the_range_in_order_with_sizes_within_one() {
    for (start, end, parts) in [
        (0, 10, 3),
        (-7, 8, 4),
        (5, 5, 2),
        (0, 3, 7),
        (0, 1_000_000, 1000),
    ] {
        let plan = slices(RangeSum.plan(&input(start, end, parts)).expect("plan"));
        assert_eq!(plan.len(), parts as usize);
        assert_eq!(plan[0].start, start);
        assert_eq!(plan[plan.len() - 1].end, end);
        for pair in plan.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        let sizes: Vec<i64> = plan.iter().map(|s| s.end - s.start).collect();
        let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{sizes:?}"
        );
        let total: i128 = plan.iter().map(|s| sum_of_range(s.start, s.end)).sum();
        assert_eq!(total, (i128::from(start)..i128::from(end)).sum::<i128>());
    }
}

#[test]
fn bad_inputs_are_refused() {
    assert!(RangeSum.plan(&input(10, 0, 2)).is_err());
    assert!(RangeSum.plan(&input(0, 10, 0)).is_err());
    assert!(RangeSum
        .plan(&RangeSumInput {
            poison: vec![5],
            ..input(0, 10, 5)
        })
        .is_err());
    assert!(RangeSum
        .plan(&RangeSumInput {
            crash: vec![9],
            ..input(0, 10, 5)
        })
        .is_err());
}
