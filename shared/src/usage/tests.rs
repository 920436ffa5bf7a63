//! Unit tests of usage entries: checks, merging per model, the meter.

use super::*;

fn entry(model: &str, prompt: u64, completion: u64, cost: Option<f64>) -> Usage {
    Usage {
        model: model.to_owned(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        calls: 1,
        cost,
        ..Usage::default()
    }
}

#[test]
fn merge_adds_per_model_in_first_seen_order() {
    let mut sum = vec![entry("a", 10, 5, Some(0.5))];
    merge(
        &mut sum,
        [entry("b", 1, 1, None), entry("a", 2, 3, Some(0.25))],
    );
    assert_eq!(sum.len(), 2);
    assert_eq!(sum[0].model, "a");
    assert_eq!((sum[0].prompt_tokens, sum[0].completion_tokens), (12, 8));
    assert_eq!(sum[0].calls, 2);
    assert_eq!(sum[0].cost, Some(0.75));
    assert_eq!(sum[1].cost, None);
}

#[test]
fn a_cost_on_either_side_is_kept() {
    let mut sum = vec![entry("a", 1, 1, None)];
    merge(&mut sum, [entry("a", 1, 1, Some(2.0))]);
    assert_eq!(sum[0].cost, Some(2.0));
}

#[test]
fn validate_refuses_bad_names_counts_and_costs() {
    assert!(entry("gpt-4o-mini", 1, 1, Some(0.1)).validate().is_ok());
    assert!(entry("", 1, 1, None).validate().is_err());
    assert!(entry("a b", 1, 1, None).validate().is_err());
    assert!(entry(&"m".repeat(MAX_MODEL_BYTES + 1), 1, 1, None)
        .validate()
        .is_err());
    assert!(entry("a", MAX_COUNT + 1, 1, None).validate().is_err());
    assert!(entry("a", 1, 1, Some(-1.0)).validate().is_err());
    assert!(entry("a", 1, 1, Some(f64::NAN)).validate().is_err());
    let many = vec![entry("a", 1, 1, None); MAX_USAGE_ENTRIES + 1];
    assert!(validate_all(&many).is_err());
}

#[test]
fn calls_default_to_one() {
    let usage: Usage =
        serde_json::from_str(r#"{"model":"a","prompt_tokens":3}"#).expect("an entry");
    assert_eq!(usage.calls, 1);
    assert_eq!(usage.tokens(), 3);
    assert!(serde_json::from_str::<Usage>(r#"{"model":"a","tokens":3}"#).is_err());
}

#[test]
fn the_meter_merges_and_takes() {
    let meter = UsageMeter::default();
    meter.clone().record([entry("a", 1, 2, None)]);
    meter.record([entry("a", 1, 2, None)]);
    let taken = meter.take();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].tokens(), 6);
    assert!(meter.take().is_empty());
}

#[test]
fn a_budget_is_spent_once_used_reaches_max_tokens() {
    let budget = Budget {
        max_tokens: 100,
        used: 60,
    };
    assert!(!budget.spent());
    assert!(!budget.after(39).spent());
    assert!(budget.after(40).spent());
    assert!(budget.after(u64::MAX).spent());
}

#[test]
fn add_to_stats_sums_per_model_and_costs() {
    let mut tokens = BTreeMap::new();
    let mut cost = None;
    add_to_stats(&mut tokens, &mut cost, &[entry("a", 10, 5, None)]);
    assert_eq!(cost, None);
    add_to_stats(
        &mut tokens,
        &mut cost,
        &[entry("a", 1, 1, Some(0.25)), entry("b", 2, 0, Some(0.5))],
    );
    assert_eq!(
        (
            tokens["a"].prompt,
            tokens["a"].completion,
            tokens["a"].calls
        ),
        (11, 6, 2)
    );
    assert_eq!(tokens["b"].prompt, 2);
    assert_eq!(cost, Some(0.75));
}

#[test]
fn the_meter_tells_its_tokens_without_taking_them() {
    let meter = UsageMeter::default();
    meter.record([entry("a", 10, 5, None), entry("b", 1, 1, None)]);
    assert_eq!(meter.tokens(), 17);
    assert_eq!(meter.take().len(), 2);
    assert_eq!(meter.tokens(), 0);
}
