//! The metrics of Chorus (names in [`names`], prefix `chorus_`), recorded through the `metrics`
//! facade where the events happen and rendered in Prometheus text by
//! `metrics-exporter-prometheus` for `/metrics`.
//!
//! Labels are bounded: kind and worker type names (the deployment's own), statuses, queue names
//! and reason classes; never a task or subtask id, never free text.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::usage::Usage;

/// The metric names (Prometheus conventions: `_total` counters, `_seconds` histograms).
pub mod names {
    /// Tasks claimed for the first time by an orchestrator, `{kind}`.
    pub const TASKS_SUBMITTED: &str = "chorus_tasks_submitted_total";
    /// Tasks whose outcome was stored, `{kind,status}`.
    pub const TASKS_FINISHED: &str = "chorus_tasks_finished_total";
    /// Subtask attempts a worker started, `{kind,worker_type}`.
    pub const SUBTASKS_STARTED: &str = "chorus_subtasks_started_total";
    /// Subtasks that succeeded, `{kind,worker_type}`.
    pub const SUBTASKS_SUCCEEDED: &str = "chorus_subtasks_succeeded_total";
    /// Subtasks that failed for good, `{kind,worker_type}`.
    pub const SUBTASKS_FAILED: &str = "chorus_subtasks_failed_total";
    /// Subtask attempts that failed and were scheduled again, `{kind,worker_type}`.
    pub const SUBTASKS_RETRIED: &str = "chorus_subtasks_retried_total";
    /// Seconds a subtask attempt's handler ran, `{kind,worker_type}`.
    pub const SUBTASK_RUN: &str = "chorus_subtask_run_seconds";
    /// Seconds from a subtask's publish to its start on a worker, `{kind,worker_type}`.
    pub const SUBTASK_QUEUE_WAIT: &str = "chorus_subtask_queue_wait_seconds";
    /// Handler slots of a worker type, `{worker_type,state="busy"|"total"}`.
    pub const WORKER_SLOTS: &str = "chorus_worker_slots";
    /// Messages this service sent to `chorus.dead`, `{queue,reason}` (a [`super::reason_class`]).
    pub const DEAD_LETTERS: &str = "chorus_dead_letters_total";
    /// Connections re-established after a loss, `{server="rabbitmq"|"redis"}`.
    pub const RECONNECTS: &str = "chorus_reconnects_total";
    /// Seconds to deliver a finished task's outcome: published to every waiter and to
    /// `chorus.events` with confirms, the parent told, the children cancelled, marked delivered.
    pub const OUTCOME_DELIVERY: &str = "chorus_outcome_delivery_seconds";
    /// Tokens of model calls, `{model,type="prompt"|"completion"|"cached"}`.
    pub const LLM_TOKENS: &str = "chorus_llm_tokens_total";
    /// Model calls, `{model,result="ok"|"error"|"cache_hit"}`.
    pub const LLM_CALLS: &str = "chorus_llm_calls_total";
    /// Stuck tasks reported by the sweeper, once per task per sweep (`crate::sweep`).
    pub const STUCK_TASK_REPORTS: &str = "chorus_stuck_task_reports_total";
    /// Pending subtasks of stuck tasks the sweeper repaired, `{action="failed"|"republished"}`.
    pub const STUCK_SUBTASKS_REPAIRED: &str = "chorus_stuck_subtasks_repaired_total";
}

/// Histogram buckets in seconds: from a no-op subtask (ms) to a long model call (minutes).
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls do
/// nothing). Without it, recording is a no-op (`--http-listen off`, the CLI, tests).
pub fn install() {
    HANDLE.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .map(PrometheusBuilder::install_recorder);
        match built {
            Ok(Ok(handle)) => Some(handle),
            Ok(Err(error)) | Err(error) => {
                // Another recorder (a binary of a user's own) keeps its metrics; ours go there.
                tracing::warn!(%error, "metrics recorder not installed; /metrics stays empty");
                None
            }
        }
    });
}

/// The metrics in Prometheus text format (empty before [`install`]).
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(handle)) => {
            handle.run_upkeep();
            handle.render()
        }
        _ => String::new(),
    }
}

/// The bounded class of a dead letter's reason (the `reason` label), from the texts Chorus
/// writes: `malformed`, `unsupported-content-type`, `oversized`, `unknown-kind`,
/// `unhandleable` (Redis refused it for good), `failed` (a subtask out of attempts or fatal),
/// `poison` (it kept crashing its worker), `deferred-too-often`, else `invalid`.
pub fn reason_class(reason: &str) -> &'static str {
    const CLASSES: &[(&str, &str)] = &[
        ("cannot decode", "malformed"),
        ("cannot encode", "malformed"),
        ("unsupported content_type", "unsupported-content-type"),
        ("body is ", "oversized"),
        ("unknown kind", "unknown-kind"),
        ("cannot be handled", "unhandleable"),
    ];
    if let Some((_, class)) = CLASSES.iter().find(|(start, _)| reason.starts_with(start)) {
        return class;
    }
    if reason.starts_with("failed after") {
        // The worker's own words for a subtask that keeps taking its process down.
        if reason.contains("times without finishing") {
            return "poison";
        }
        return "failed";
    }
    if reason.contains("deferred") {
        return "deferred-too-often";
    }
    if reason.contains("unknown kind") {
        return "unknown-kind";
    }
    "invalid"
}

/// A message went to `chorus.dead` from `queue` for `reason`.
pub fn dead_letter(queue: &str, reason: &str) {
    counter!(names::DEAD_LETTERS, "queue" => queue.to_owned(), "reason" => reason_class(reason))
        .increment(1);
}

/// A connection to `server` (`rabbitmq` or `redis`) was re-established.
pub fn reconnect(server: &'static str) {
    counter!(names::RECONNECTS, "server" => server).increment(1);
}

/// A task of `kind` was claimed for the first time.
pub fn task_submitted(kind: &str) {
    counter!(names::TASKS_SUBMITTED, "kind" => kind.to_owned()).increment(1);
}

/// A task of `kind` finished with `status` (`succeeded`, `failed`, `cancelled`, ...).
pub fn task_finished(kind: &str, status: &'static str) {
    counter!(names::TASKS_FINISHED, "kind" => kind.to_owned(), "status" => status).increment(1);
}

/// A sweep found `count` tasks stuck (each counted again by every sweep that finds it still
/// stuck, so the rate says how many are stuck now).
pub fn stuck_tasks_reported(count: usize) {
    counter!(names::STUCK_TASK_REPORTS).increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// The sweeper repaired `count` pending subtasks of stuck tasks by `action`: `failed` (settled
/// as failed, the broker having dead-lettered them) or `republished` (their message gone).
pub fn stuck_subtasks_repaired(action: &'static str, count: usize) {
    counter!(names::STUCK_SUBTASKS_REPAIRED, "action" => action)
        .increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// Seconds an outcome took from being stored to being delivered.
pub fn outcome_delivered(seconds: f64) {
    histogram!(names::OUTCOME_DELIVERY).record(seconds);
}

/// The labels of a subtask's metrics.
fn subtask_labels(kind: &str, worker_type: &str) -> [(&'static str, String); 2] {
    [
        ("kind", kind.to_owned()),
        ("worker_type", worker_type.to_owned()),
    ]
}

/// An attempt of a subtask started after waiting `queue_wait_seconds` (publish to start; `None`
/// when the message carries no publish time).
pub fn subtask_started(kind: &str, worker_type: &str, queue_wait_seconds: Option<f64>) {
    let labels = subtask_labels(kind, worker_type);
    counter!(names::SUBTASKS_STARTED, &labels).increment(1);
    if let Some(seconds) = queue_wait_seconds {
        histogram!(names::SUBTASK_QUEUE_WAIT, &labels).record(seconds);
    }
}

/// How an attempt of a subtask ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// It succeeded.
    Succeeded,
    /// It failed for good.
    Failed,
    /// It failed and goes again.
    Retried,
}

/// The handler of a subtask's attempt ran `run_seconds`.
pub fn subtask_ran(kind: &str, worker_type: &str, run_seconds: f64) {
    histogram!(names::SUBTASK_RUN, &subtask_labels(kind, worker_type)).record(run_seconds);
}

/// An attempt of a subtask ended as `settled`.
pub fn subtask_settled(kind: &str, worker_type: &str, settled: Settled) {
    let labels = subtask_labels(kind, worker_type);
    let name = match settled {
        Settled::Succeeded => names::SUBTASKS_SUCCEEDED,
        Settled::Failed => names::SUBTASKS_FAILED,
        Settled::Retried => names::SUBTASKS_RETRIED,
    };
    counter!(name, &labels).increment(1);
}

/// The worker serves `worker_type` with `total` handler slots.
pub fn slots_total(worker_type: &str, total: usize) {
    gauge!(names::WORKER_SLOTS, "worker_type" => worker_type.to_owned(), "state" => "total")
        .set(u32::try_from(total).unwrap_or(u32::MAX));
    gauge!(names::WORKER_SLOTS, "worker_type" => worker_type.to_owned(), "state" => "busy").set(0);
}

/// A handler slot of `worker_type` is busy until the guard drops.
#[must_use = "the slot counts as busy while the guard lives"]
pub fn slot_busy(worker_type: &str) -> SlotBusy {
    let busy =
        gauge!(names::WORKER_SLOTS, "worker_type" => worker_type.to_owned(), "state" => "busy");
    busy.increment(1);
    SlotBusy(busy)
}

/// Counts a slot busy while it lives (see [`slot_busy`]).
pub struct SlotBusy(metrics::Gauge);

impl Drop for SlotBusy {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}

/// The model calls of one attempt's `usage` entries (those the step reported).
pub fn llm_usage(usage: &[Usage]) {
    for entry in usage {
        let model = entry.model.clone();
        for (kind, tokens) in [
            ("prompt", entry.prompt_tokens),
            ("completion", entry.completion_tokens),
            ("cached", entry.cached_tokens),
        ] {
            counter!(names::LLM_TOKENS, "model" => model.clone(), "type" => kind).increment(tokens);
        }
        let paid = entry.calls.saturating_sub(entry.cache_hits);
        counter!(names::LLM_CALLS, "model" => model.clone(), "result" => "ok").increment(paid);
        counter!(names::LLM_CALLS, "model" => model, "result" => "cache_hit")
            .increment(entry.cache_hits);
    }
}

/// A model call of `model` failed (no usage entry reports it).
pub fn llm_call_failed(model: &str) {
    counter!(names::LLM_CALLS, "model" => model.to_owned(), "result" => "error").increment(1);
}
