//! `range-sum`: sums the integers of `[start, end)` in `parts` contiguous slices. Deterministic,
//! with knobs to inject delays and failures, so tests and benchmarks can check every result.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HandlerContext, Kind, KindError};
use crate::failpoint;

/// Most slices one task may have.
pub const MAX_PARTS: u32 = 1_000_000;

/// The `range-sum` kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeSum;

/// Input of a `range-sum` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSumInput {
    /// First integer of the range.
    pub start: i64,
    /// One past the last integer.
    pub end: i64,
    /// Number of slices (subtasks).
    pub parts: u32,
    /// Sleep per subtask attempt, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Every subtask fails its first this many attempts.
    #[serde(default)]
    pub fail_attempts: u32,
    /// Indices of subtasks that fail on every attempt.
    #[serde(default)]
    pub poison: Vec<u32>,
    /// Indices of subtasks whose handler panics on every attempt.
    #[serde(default)]
    pub panic: Vec<u32>,
    /// Indices of subtasks that abort their worker process on every attempt — only where the
    /// worker runs with the failpoint `range-sum.crash=abort` (the fault-injection suite);
    /// elsewhere they run normally.
    #[serde(default)]
    pub crash: Vec<u32>,
}

/// One slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Position in the plan.
    pub index: u32,
    /// First integer.
    pub start: i64,
    /// One past the last integer.
    pub end: i64,
    /// Sleep per attempt.
    pub delay_ms: u64,
    /// Attempts that fail before one succeeds.
    pub fail_attempts: u32,
    /// Whether every attempt fails.
    pub poison: bool,
    /// Whether every attempt panics.
    #[serde(default)]
    pub panic: bool,
    /// Whether every attempt hits the `range-sum.crash` failpoint.
    #[serde(default)]
    pub crash: bool,
}

/// Sum of one slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceSum {
    /// The sum.
    pub sum: i64,
}

/// Output of a `range-sum` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSumOutput {
    /// Sum over the slices that succeeded.
    pub sum: i64,
    /// Slices that went into the sum.
    pub parts: u64,
}

/// Sum of the integers in `[start, end)`, exactly.
pub fn sum_of_range(start: i64, end: i64) -> i128 {
    if end <= start {
        return 0;
    }
    let (a, b) = (i128::from(start), i128::from(end));
    (a + b - 1) * (b - a) / 2
}

/// The `index`-th of `parts` contiguous slices of `[start, end)`, sizes differing by at most one.
pub fn slice_bounds(start: i64, end: i64, parts: u32, index: u32) -> (i64, i64) {
    let len = i128::from(end) - i128::from(start);
    let (base, extra) = (len / i128::from(parts), len % i128::from(parts));
    let i = i128::from(index);
    let first = i128::from(start) + i * base + i.min(extra);
    let size = base + i128::from(i < extra);
    // Both bounds lie within [start, end], so they fit in i64.
    let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
    (clamp(first), clamp(first + size))
}

impl Kind for RangeSum {
    type Input = RangeSumInput;
    type Subtask = Slice;
    type Output = SliceSum;
    type Final = RangeSumOutput;

    fn name(&self) -> &str {
        "range-sum"
    }

    fn plan(&self, input: &RangeSumInput) -> Result<Vec<Slice>, KindError> {
        if input.end < input.start {
            return Err(KindError::fatal(format!(
                "end ({}) must not be below start ({})",
                input.end, input.start
            )));
        }
        if !(1..=MAX_PARTS).contains(&input.parts) {
            return Err(KindError::fatal(format!(
                "parts must be between 1 and {MAX_PARTS}, got {}",
                input.parts
            )));
        }
        for (name, indices) in [
            ("poison", &input.poison),
            ("panic", &input.panic),
            ("crash", &input.crash),
        ] {
            if let Some(bad) = indices.iter().find(|&&i| i >= input.parts) {
                return Err(KindError::fatal(format!(
                    "{name} index {bad} is out of range (parts = {})",
                    input.parts
                )));
            }
        }
        Ok((0..input.parts)
            .map(|index| {
                let (start, end) = slice_bounds(input.start, input.end, input.parts, index);
                Slice {
                    index,
                    start,
                    end,
                    delay_ms: input.delay_ms,
                    fail_attempts: input.fail_attempts,
                    poison: input.poison.contains(&index),
                    panic: input.panic.contains(&index),
                    crash: input.crash.contains(&index),
                }
            })
            .collect())
    }

    async fn handle(&self, slice: Slice, context: HandlerContext) -> Result<SliceSum, KindError> {
        if slice.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(slice.delay_ms)).await;
        }
        if context.attempt <= slice.fail_attempts {
            return Err(KindError::retryable(format!(
                "injected failure on attempt {} (fail_attempts = {})",
                context.attempt, slice.fail_attempts
            )));
        }
        if slice.poison {
            return Err(KindError::retryable(format!(
                "subtask {} is poisoned",
                slice.index
            )));
        }
        if slice.crash {
            failpoint::hit("range-sum.crash").await;
        }
        if slice.panic {
            panic!("subtask {} panics by request", slice.index);
        }
        let sum = i64::try_from(sum_of_range(slice.start, slice.end)).map_err(|_| {
            KindError::fatal(format!(
                "sum of [{}, {}) overflows i64",
                slice.start, slice.end
            ))
        })?;
        Ok(SliceSum { sum })
    }

    fn synthesize(
        &self,
        _input: &RangeSumInput,
        outputs: Vec<(String, SliceSum)>,
    ) -> Result<RangeSumOutput, KindError> {
        let total: i128 = outputs.iter().map(|(_, part)| i128::from(part.sum)).sum();
        let sum = i64::try_from(total).map_err(|_| KindError::fatal("total sum overflows i64"))?;
        Ok(RangeSumOutput {
            sum,
            parts: outputs.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(start: i64, end: i64, parts: u32) -> RangeSumInput {
        RangeSumInput {
            start,
            end,
            parts,
            delay_ms: 0,
            fail_attempts: 0,
            poison: vec![],
            panic: vec![],
            crash: vec![],
        }
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
            let plan = RangeSum.plan(&input(start, end, parts)).expect("plan");
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
}
