//! `range-sum`: sums the integers of `[start, end)` in `parts` contiguous slices. Deterministic,
//! with knobs to inject delays and failures, so tests and benchmarks can check every result.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HandlerContext, Kind, KindError, Plan, Planned, Review};
use crate::{clock::now_ms, failpoint};

/// Most slices one task may have.
pub const MAX_PARTS: u32 = 1_000_000;
/// Most slices a plan may have and still count as small work (see [`Kind::small_plan`]): a
/// thousand parts plan in about half a millisecond.
pub const INLINE_PARTS: u32 = 1_000;
/// Slices of a child `range-sum` task that runs one slice (input `children`).
pub const CHILD_PARTS: u32 = 2;

/// The `range-sum` kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeSum;

/// Input of a `range-sum` task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Worker types, slice `i` going to `types[i % len]` (default: the `default` type).
    #[serde(default)]
    pub types: Vec<String>,
    /// Slice `i` depends on slice `i - 1`: each output's `total` is then a prefix sum.
    #[serde(default)]
    pub chain: bool,
    /// Extra dependencies as `[slice, dependency]` pairs of indices.
    #[serde(default)]
    pub after: Vec<[u32; 2]>,
    /// A slice of more integers than this spawns its two halves instead of summing (0: never).
    #[serde(default)]
    pub split_above: u64,
    /// Outputs carry their start and end times, and the task output the peak of slices that ran
    /// at once.
    #[serde(default)]
    pub trace: bool,
    /// Indices of slices whose first version returns a draft (its sum off by one) that the
    /// review sends back: with `max_rounds` ≥ 2 the sum comes out exact.
    #[serde(default)]
    pub drafts: Vec<u32>,
    /// Indices of slices run as child `range-sum` tasks of two parts each (with this task's
    /// `delay_ms`). A child slice also listed in `drafts` runs first as a `draft` child.
    #[serde(default)]
    pub children: Vec<u32>,
    /// The output is a draft: its sum off by one and marked `draft`, for a parent's review
    /// to send back (what a child slice listed in its parent's `drafts` runs with).
    #[serde(default)]
    pub draft: bool,
    /// The planner panics (the task is then rejected).
    #[serde(default)]
    pub plan_panics: bool,
    /// The synthesis panics (the task then fails).
    #[serde(default)]
    pub synthesis_panics: bool,
    /// The planner aborts its orchestrator — only where the orchestrator runs with the
    /// failpoint `range-sum.plan-crash=abort` (the fault-injection suite).
    #[serde(default)]
    pub plan_crashes: bool,
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
    /// Spawn halves instead of summing above this many integers (0: never).
    #[serde(default)]
    pub split_above: u64,
    /// Record start and end times.
    #[serde(default)]
    pub trace: bool,
    /// Return a draft (sum off by one) for the review to send back.
    #[serde(default)]
    pub draft: bool,
}

/// Sum of one slice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceSum {
    /// The sum (0 for a slice that split itself: its halves carry it).
    pub sum: i64,
    /// The sum plus the `total`s of the slices it depends on.
    #[serde(default)]
    pub total: i64,
    /// Whether this is a draft the review should send back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft: bool,
    /// When the handler started, ms since the Unix epoch (with `trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it finished (with `trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// Output of a `range-sum` task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSumOutput {
    /// Sum over the slices that succeeded.
    pub sum: i64,
    /// Slices that went into the sum.
    pub parts: u64,
    /// `total` of the last slice in plan order, when slices have dependencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_total: Option<i64>,
    /// Most slices that ran at once (with `trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_in_flight: Option<u64>,
    /// A draft (input `draft`): a parent's review sends it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft: bool,
}

/// Refuses an input whose range, part count or slice indices do not fit together.
fn check(input: &RangeSumInput) -> Result<(), KindError> {
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
    if let Some([slice, dep]) = input
        .after
        .iter()
        .find(|[slice, dep]| *slice >= input.parts || *dep >= input.parts)
    {
        return Err(KindError::fatal(format!(
            "after pair [{slice}, {dep}] is out of range (parts = {})",
            input.parts
        )));
    }
    Ok(())
}

/// Slice `index` run as a child `range-sum` task of two parts, a `draft` one when asked.
fn child_slice(
    input: &RangeSumInput,
    index: u32,
    draft: bool,
) -> Result<Planned<Slice>, KindError> {
    let (start, end) = slice_bounds(input.start, input.end, input.parts, index);
    let child = RangeSumInput {
        start,
        end,
        parts: CHILD_PARTS,
        delay_ms: input.delay_ms,
        draft,
        ..RangeSumInput::default()
    };
    Planned::child("range-sum", &child, None)
}

/// Most of the `[start, end)` intervals that overlap at one instant.
pub fn peak_overlap(intervals: &[(u64, u64)]) -> u64 {
    let mut edges: Vec<(u64, i64)> = intervals
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    // An end sorts before a start at the same instant: touching intervals do not overlap.
    edges.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    u64::try_from(peak).unwrap_or(0)
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
    // Planning and synthesis only compute.
    const INLINE: bool = true;

    fn name(&self) -> &str {
        "range-sum"
    }

    fn small_plan(&self, input: &RangeSumInput) -> bool {
        input.parts <= INLINE_PARTS
    }

    fn plan(&self, input: &RangeSumInput) -> Result<Plan<Slice>, KindError> {
        if input.plan_panics {
            panic!("the planner panics by request");
        }
        if input.plan_crashes {
            failpoint::hit_blocking("range-sum.plan-crash");
        }
        check(input)?;
        let mut plan = Vec::with_capacity(input.parts as usize);
        for index in 0..input.parts {
            let (start, end) = slice_bounds(input.start, input.end, input.parts, index);
            let mut planned = if input.children.contains(&index) {
                child_slice(input, index, input.drafts.contains(&index))?
            } else {
                Planned::new(Slice {
                    index,
                    start,
                    end,
                    delay_ms: input.delay_ms,
                    fail_attempts: input.fail_attempts,
                    poison: input.poison.contains(&index),
                    panic: input.panic.contains(&index),
                    crash: input.crash.contains(&index),
                    split_above: input.split_above,
                    trace: input.trace,
                    draft: input.drafts.contains(&index),
                })
            };
            if !input.types.is_empty() {
                planned = planned.on(input.types[index as usize % input.types.len()].clone());
            }
            if input.chain && index > 0 {
                planned = planned.after([(index - 1).to_string()]);
            }
            let extra = input
                .after
                .iter()
                .filter(|[slice, _]| *slice == index)
                .map(|[_, dep]| dep.to_string());
            plan.push(planned.after(extra));
        }
        Ok(plan.into())
    }

    async fn handle(&self, slice: Slice, context: HandlerContext) -> Result<SliceSum, KindError> {
        let started_ms = slice.trace.then(now_ms);
        if slice.delay_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(slice.delay_ms)) => {}
                () = context.cancel.cancelled() => {
                    return Err(KindError::fatal("cancelled while sleeping"));
                }
            }
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
        let finished_ms = slice.trace.then(now_ms);
        let size = u64::try_from(i128::from(slice.end) - i128::from(slice.start)).unwrap_or(0);
        if slice.split_above > 0 && size > slice.split_above {
            let middle = slice.start + (slice.end - slice.start) / 2;
            for (start, end) in [(slice.start, middle), (middle, slice.end)] {
                context.spawn(Planned::new(Slice {
                    start,
                    end,
                    ..slice.clone()
                }))?;
            }
            return Ok(SliceSum {
                started_ms,
                finished_ms,
                ..SliceSum::default()
            });
        }
        let sum = i64::try_from(sum_of_range(slice.start, slice.end)).map_err(|_| {
            KindError::fatal(format!(
                "sum of [{}, {}) overflows i64",
                slice.start, slice.end
            ))
        })?;
        let sum = if slice.draft { sum + 1 } else { sum };
        let upstream: i64 = context
            .dependency_outputs::<SliceSum>()?
            .iter()
            .map(|(_, output)| output.total)
            .sum();
        Ok(SliceSum {
            sum,
            total: sum + upstream,
            draft: slice.draft,
            started_ms,
            finished_ms,
        })
    }

    fn synthesize(
        &self,
        input: &RangeSumInput,
        outputs: Vec<(String, SliceSum)>,
    ) -> Result<RangeSumOutput, KindError> {
        if input.synthesis_panics {
            panic!("the synthesis panics by request");
        }
        let total: i128 = outputs.iter().map(|(_, part)| i128::from(part.sum)).sum();
        let total = if input.draft { total + 1 } else { total };
        let sum = i64::try_from(total).map_err(|_| KindError::fatal("total sum overflows i64"))?;
        let has_dependencies = input.chain || !input.after.is_empty();
        let intervals: Vec<(u64, u64)> = outputs
            .iter()
            .filter_map(|(_, part)| part.started_ms.zip(part.finished_ms))
            .collect();
        Ok(RangeSumOutput {
            sum,
            parts: outputs.len() as u64,
            last_total: has_dependencies
                .then(|| outputs.last().map(|(_, part)| part.total))
                .flatten(),
            peak_in_flight: input.trace.then(|| peak_overlap(&intervals)),
            draft: input.draft,
        })
    }

    fn review(
        &self,
        input: &RangeSumInput,
        outputs: &[(String, SliceSum)],
        _round: u32,
    ) -> Result<Review<Slice>, KindError> {
        let redo: Vec<Planned<Slice>> = outputs
            .iter()
            .filter(|(_, part)| part.draft)
            .filter_map(|(id, _)| id.parse::<u32>().ok().map(|index| (id, index)))
            .map(|(id, index)| {
                if input.children.contains(&index) {
                    return Ok(child_slice(input, index, false)?.id(id.clone()));
                }
                let (start, end) = slice_bounds(input.start, input.end, input.parts, index);
                Ok(Planned::new(Slice {
                    index,
                    start,
                    end,
                    delay_ms: input.delay_ms,
                    fail_attempts: 0,
                    poison: false,
                    panic: false,
                    crash: false,
                    split_above: 0,
                    trace: input.trace,
                    draft: false,
                })
                .id(id.clone()))
            })
            .collect::<Result<_, KindError>>()?;
        Ok(if redo.is_empty() {
            Review::Accept
        } else {
            Review::Revise(redo)
        })
    }
}

#[cfg(test)]
mod tests;
