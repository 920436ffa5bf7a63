//! One attempt of a subtask: its handler run under the time limit, how it ended ([`Attempt`]),
//! and the result message it settles with.

use std::time::Duration;

use chorus_shared::{
    clock::now_ms,
    kinds::{self, panic_message, KindError},
    observe::metrics,
    protocol::{PlanEntry, ResultMessage, SubtaskMessage, SubtaskOutcome},
    text,
    usage::{Usage, UsageMeter},
};

/// The settled result of this attempt of `subtask`.
pub(crate) fn result_of(
    subtask: &SubtaskMessage,
    outcome: SubtaskOutcome,
    spawned: Vec<PlanEntry>,
    usage: Vec<Usage>,
) -> ResultMessage {
    ResultMessage {
        task: subtask.task.clone(),
        subtask: subtask.subtask.clone(),
        attempts: subtask.attempt,
        outcome,
        spawned,
        round: subtask.round,
        usage,
    }
}

/// A spawned task that is aborted when this is dropped.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How an attempt ended, before deciding between retry and settling.
pub(crate) enum Attempt {
    Succeeded {
        output: Vec<u8>,
        spawned: Vec<PlanEntry>,
        /// What the attempt's model calls used.
        usage: Vec<Usage>,
    },
    Failed {
        message: String,
        retryable: bool,
        /// The least wait before the next attempt the handler asked for (HTTP `Retry-After`).
        retry_after: Option<Duration>,
        /// What the attempt's model calls used before it failed: paid, so counted too.
        usage: Vec<Usage>,
    },
    /// The task ended (cancelled, failed, past its deadline) while the handler ran: nothing
    /// to publish.
    TaskOver,
}

impl Attempt {
    /// A failed attempt; `message` (often the handler's own text) is escaped and bounded
    /// ([`text::reason`]) before it reaches a log line, a result or a dead letter.
    pub(crate) fn failed(message: impl AsRef<str>, retryable: bool) -> Self {
        Self::Failed {
            message: text::reason(message.as_ref()),
            retryable,
            retry_after: None,
            usage: Vec::new(),
        }
    }

    /// The failed attempt of a handler's `error`, with its retry class and wait.
    pub(crate) fn from_error(error: &KindError) -> Self {
        Self::Failed {
            message: text::reason(error.message()),
            retryable: error.is_retryable(),
            retry_after: error.retry_after(),
            usage: Vec::new(),
        }
    }

    /// This attempt with `recorded` (what its handler's usage meter holds) as its usage.
    pub(crate) fn with_usage(mut self, recorded: Vec<Usage>) -> Self {
        if let Self::Succeeded { usage, .. } | Self::Failed { usage, .. } = &mut self {
            *usage = recorded;
        }
        self
    }

    /// Counts how this attempt of `subtask` ended, and its model calls. A kind this worker
    /// lacks is counted under `kind="(unknown)"`: the label holds only the deployment's kinds.
    pub(crate) fn record_metrics(&self, subtask: &SubtaskMessage, known_kind: bool) {
        let kind = if known_kind {
            subtask.kind.as_str()
        } else {
            "(unknown)"
        };
        let settled = match self.event_status(subtask) {
            "succeeded" => metrics::Settled::Succeeded,
            "retrying" => metrics::Settled::Retried,
            "failed" => metrics::Settled::Failed,
            _ => return,
        };
        metrics::subtask_settled(kind, &subtask.worker_type, settled);
        if let Self::Succeeded { usage, .. } | Self::Failed { usage, .. } = self {
            metrics::llm_usage(usage);
        }
    }

    /// The status of the `subtask.<status>` event that reports this attempt of `subtask`.
    pub(crate) fn event_status(&self, subtask: &SubtaskMessage) -> &'static str {
        match self {
            Self::TaskOver => "cancelled",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed {
                retryable: true, ..
            } if subtask.attempt < subtask.max_attempts => "retrying",
            Self::Failed { .. } => "failed",
        }
    }
}

/// What a subtask's attempt leaves to publish.
pub(crate) enum Settlement {
    /// Nothing: the task is over.
    Nothing,
    /// The subtask settled (succeeded, or failed with no attempt left).
    Settled(ResultMessage),
    /// Another attempt, later: the next attempt's message, the error that caused it and the
    /// least wait its handler asked for.
    Retry(SubtaskMessage, String, Option<Duration>),
}

/// The time limit of an attempt at `subtask`: its timeout, or what is left before its task's
/// deadline when that comes first (then `true`).
pub(crate) fn time_limit(subtask: &SubtaskMessage) -> (Duration, bool) {
    let time_limit = Duration::from_millis(subtask.timeout_ms);
    if let Some(at) = subtask.deadline_at_ms {
        let left = Duration::from_millis(at.saturating_sub(now_ms()));
        if left < time_limit {
            return (left, true);
        }
    }
    (time_limit, false)
}

/// Waits for the spawned `handler` of `subtask` under its time limit — its timeout, or what is
/// left before the task's deadline when that comes first — and says how the attempt ended
/// (`spawned`: what the handler spawned, taken when it succeeds; `usage`: what its model calls
/// used, taken however it ended).
pub(crate) async fn await_handler(
    mut handler: AbortOnDrop<Result<Vec<u8>, KindError>>,
    subtask: &SubtaskMessage,
    spawned: &kinds::Spawned,
    usage: &UsageMeter,
) -> Attempt {
    let (time_limit, deadline_bound) = time_limit(subtask);
    let attempt = match tokio::time::timeout(time_limit, &mut handler.0).await {
        Ok(Ok(Ok(output))) => Attempt::Succeeded {
            output,
            spawned: kinds::spawned_entries(
                spawned.take(),
                &format!("{}.", subtask.subtask),
                subtask.depth + 1,
            ),
            usage: Vec::new(),
        },
        Ok(Ok(Err(error))) => Attempt::from_error(&error),
        Ok(Err(join)) => {
            Attempt::failed(format!("handler panicked: {}", panic_message(join)), true)
        }
        Err(_) => {
            handler.0.abort();
            if deadline_bound {
                Attempt::failed("stopped at the task's deadline", false)
            } else {
                Attempt::failed(format!("timed out after {} ms", subtask.timeout_ms), true)
            }
        }
    };
    attempt.with_usage(usage.take())
}
