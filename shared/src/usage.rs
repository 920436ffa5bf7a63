//! Tokens and cost of the model calls a task's steps made: the `usage` entries steps answer
//! with (docs/kinds.md#usage), the [`UsageMeter`] a handler reports them through, and the
//! per-model totals an outcome's `stats.tokens` shows (docs/protocol.md#outcomes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The error of a model call (or a subtask) not started because its task's `max_tokens` was
/// spent: the same text wherever the budget is checked (worker, `llm` step).
pub const TOKEN_BUDGET_EXCEEDED: &str = "token budget exceeded";

/// Most usage entries one answer (or one result) may carry: one per model, and a step calls
/// few models.
pub const MAX_USAGE_ENTRIES: usize = 64;
/// Longest model name in a usage entry, in bytes.
pub const MAX_MODEL_BYTES: usize = 100;
/// Largest token or call count one entry may give: far above any real call, low enough that a
/// task's sums never overflow Redis's 64-bit counters.
pub const MAX_COUNT: u64 = 1_000_000_000_000;

/// What the calls to one model cost, as a step reports it and a result carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// The model's name (the kinds file's `[models.<name>]`, or the step's own name for it).
    pub model: String,
    /// Tokens of the prompts.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens of the completions.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Of the prompt tokens, those the provider served from its prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Calls made (those answered from Chorus's cache included).
    #[serde(default = "one")]
    pub calls: u64,
    /// Calls answered from Chorus's cache, paying nothing.
    #[serde(default)]
    pub cache_hits: u64,
    /// What the calls cost, in the unit of the model's prices; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

fn one() -> u64 {
    1
}

impl Usage {
    /// Tokens that count against a task's `max_tokens`: prompt plus completion.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Checks one entry: a model name of 1 to [`MAX_MODEL_BYTES`] bytes without whitespace or
    /// control characters (it becomes part of a Redis field name), counts up to
    /// [`MAX_COUNT`], a cost that is finite and not negative.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_empty()
            || self.model.len() > MAX_MODEL_BYTES
            || self
                .model
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "usage.model must be 1 to {MAX_MODEL_BYTES} bytes without spaces or control characters, got {}",
                crate::text::quoted(&self.model)
            ));
        }
        for (name, value) in [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("cached_tokens", self.cached_tokens),
            ("calls", self.calls),
            ("cache_hits", self.cache_hits),
        ] {
            if value > MAX_COUNT {
                return Err(format!(
                    "usage.{name} must be at most {MAX_COUNT}, got {value}"
                ));
            }
        }
        if let Some(cost) = self.cost {
            if !cost.is_finite() || cost < 0.0 {
                return Err(format!(
                    "usage.cost must be a number of at least 0, got {cost}"
                ));
            }
        }
        Ok(())
    }
}

/// Checks a list of entries ([`Usage::validate`], at most [`MAX_USAGE_ENTRIES`]).
///
/// # Errors
/// The first problem found.
pub fn validate_all(usage: &[Usage]) -> Result<(), String> {
    if usage.len() > MAX_USAGE_ENTRIES {
        return Err(format!(
            "usage may list at most {MAX_USAGE_ENTRIES} entries, got {}",
            usage.len()
        ));
    }
    usage.iter().try_for_each(Usage::validate)
}

/// `more` added into `into`, one entry per model (in first-seen order): what a result carries
/// for all the attempts of its subtask. Counts saturate; costs add, and an entry has a cost
/// when any of its parts had one.
pub fn merge(into: &mut Vec<Usage>, more: impl IntoIterator<Item = Usage>) {
    for entry in more {
        match into.iter_mut().find(|e| e.model == entry.model) {
            Some(sum) => {
                sum.prompt_tokens = sum.prompt_tokens.saturating_add(entry.prompt_tokens);
                sum.completion_tokens = sum
                    .completion_tokens
                    .saturating_add(entry.completion_tokens);
                sum.cached_tokens = sum.cached_tokens.saturating_add(entry.cached_tokens);
                sum.calls = sum.calls.saturating_add(entry.calls);
                sum.cache_hits = sum.cache_hits.saturating_add(entry.cache_hits);
                sum.cost = match (sum.cost, entry.cost) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
            None => into.push(entry),
        }
    }
}

/// `usage` added to an outcome's per-model `tokens` and its `cost` (what a plan, review or
/// synthesis used, counted with the outcome that stores it).
pub fn add_to_stats(
    tokens: &mut BTreeMap<String, TokenStats>,
    cost: &mut Option<f64>,
    usage: &[Usage],
) {
    for entry in usage {
        let stats = tokens.entry(entry.model.clone()).or_default();
        stats.prompt = stats.prompt.saturating_add(entry.prompt_tokens);
        stats.completion = stats.completion.saturating_add(entry.completion_tokens);
        stats.cached = stats.cached.saturating_add(entry.cached_tokens);
        stats.calls = stats.calls.saturating_add(entry.calls);
        stats.cache_hits = stats.cache_hits.saturating_add(entry.cache_hits);
        if let Some(more) = entry.cost {
            *cost = Some(cost.unwrap_or(0.0) + more);
        }
    }
}

/// What a step may still spend of its task's `max_tokens` (docs/kinds.md#budget): the budget
/// and the tokens (prompt plus completion) counted against it when the step was called. Steps
/// get it in their request as `"budget"`; an `llm` step starts no call once `used` plus its own
/// calls' tokens reach `max_tokens`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The task's `max_tokens`.
    pub max_tokens: u64,
    /// Tokens already counted against it (the task's record, plus what this attempt or step
    /// run used so far).
    pub used: u64,
}

impl Budget {
    /// Whether nothing is left: `used` has reached `max_tokens`.
    pub fn spent(&self) -> bool {
        self.used >= self.max_tokens
    }

    /// This budget with `more` tokens used besides.
    #[must_use]
    pub fn after(self, more: u64) -> Self {
        Self {
            used: self.used.saturating_add(more),
            ..self
        }
    }
}

/// Per-model token counts of a task, as an outcome's `stats.tokens` and `chorus status` show
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStats {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Cached prompt tokens (part of `prompt`).
    pub cached: u64,
    /// Calls made.
    pub calls: u64,
    /// Calls answered from Chorus's cache.
    pub cache_hits: u64,
}

/// The usage a step reported during one handler attempt (or one plan, review or synthesis),
/// collected by the service when it returns. Clones share the same list, and are equal to each
/// other only.
#[derive(Clone, Debug, Default)]
pub struct UsageMeter(Arc<Mutex<Vec<Usage>>>);

impl PartialEq for UsageMeter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for UsageMeter {}

impl UsageMeter {
    /// Adds `usage` (merged per model).
    pub fn record(&self, usage: impl IntoIterator<Item = Usage>) {
        // The lock is held only for one merge or take, so even a poisoned list is whole.
        match self.0.lock() {
            Ok(mut list) => merge(&mut list, usage),
            Err(poisoned) => merge(&mut poisoned.into_inner(), usage),
        }
    }

    /// Prompt plus completion tokens recorded so far (left in the meter).
    pub fn tokens(&self) -> u64 {
        let sum = |list: &Vec<Usage>| {
            list.iter()
                .fold(0u64, |sum, entry| sum.saturating_add(entry.tokens()))
        };
        match self.0.lock() {
            Ok(list) => sum(&list),
            Err(poisoned) => sum(&poisoned.into_inner()),
        }
    }

    /// Takes what was recorded, leaving the meter empty.
    pub fn take(&self) -> Vec<Usage> {
        match self.0.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests;
