//! Stopping a task from outside its results: cancellations and deadline timers on
//! `chorus.control`, and any other stop (a spawn limit, say) with a status and a reason.

use std::time::Duration;

use super::{
    decide::{self, Deadline},
    Finisher,
};
use crate::{
    amqp::{self, Outgoing, Publisher},
    clock::now_ms,
    error::ServiceError,
    protocol::{self, Control, Status},
    store::{KeptCancel, TaskState},
    text, topology,
};

/// Shortest wait of a deadline timer, in ms: a timer always goes through a delay queue, even
/// for a deadline already due.
const MIN_TIMER_WAIT_MS: u64 = 1;

impl Finisher {
    /// Ends a task that is not finished with `status` and one task-level error (a cancel, a
    /// passed deadline, a spawn limit), keeping the stats so far, and delivers it.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn stop(
        &self,
        id: &str,
        status: Status,
        message: String,
    ) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state != TaskState::Finished {
            tracing::info!(task = id, status = status.as_str(), %message, "stopping task");
            let outcome = decide::failed_outcome(id, status, message, &record, now_ms());
            let finished = self
                .store
                .store_outcome(&outcome, &[], self.outcome_ttl, None)
                .await?;
            return self.deliver_finished(id, finished, None).await;
        }
        if record.delivered {
            return Ok(());
        }
        self.deliver(id, None).await
    }

    /// Cancels task `id` (`reason`: the canceller's, if any): stops it when it is claimed; keeps
    /// the cancel for the outcome TTL when it is not (a cancel sent right after the submission,
    /// before an orchestrator took the task), for its claim to apply
    /// ([`crate::store::Claim::Cancelled`]). Whether the task exists is decided atomically with
    /// the claim, so a cancel is never lost between the two (docs/protocol.md, "Cancelling").
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn cancel(&self, id: &str, reason: Option<&str>) -> Result<(), ServiceError> {
        if self.store.task(id).await?.is_none()
            && self.store.keep_cancel(id, reason, self.outcome_ttl).await? == KeptCancel::Kept
        {
            tracing::info!(
                task = %text::quoted(id),
                ttl_secs = self.outcome_ttl.as_secs(),
                "cancel of a task not claimed yet; kept for its claim to apply"
            );
            return Ok(());
        }
        let message = decide::cancel_message(reason);
        self.stop(id, Status::Cancelled, message).await
    }

    /// Handles a control message.
    ///
    /// # Errors
    /// Redis or the broker failed.
    pub async fn control(&self, control: &Control) -> Result<(), ServiceError> {
        match control {
            Control::Cancel { task, reason } => self.cancel(task, reason.as_deref()).await,
            Control::Deadline { task } => self.check_deadline(task).await,
            Control::Settle { task, hops } => self.finish_if_settled_after(task, *hops).await,
        }
    }

    /// Fails the task if its deadline passed; otherwise sets the next timer.
    async fn check_deadline(&self, id: &str) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state == TaskState::Finished {
            return Ok(());
        }
        let options = record.resolved_options(id)?;
        match decide::deadline(&record, &options, now_ms()) {
            Deadline::None => Ok(()),
            Deadline::Passed(message) => self.stop(id, Status::Failed, message).await,
            Deadline::Due(due) => arm_deadline(&self.publisher, id, due).await,
        }
    }
}

/// Sets a timer that brings task `id` back to the synthesizer at `due` (ms since the epoch),
/// hopping through the delay buckets (at most a minute each,
/// [`topology::MIN_DELAY_COVERAGE_MS`]) until then.
///
/// # Errors
/// The broker failed.
pub async fn arm_deadline(publisher: &Publisher, id: &str, due: u64) -> Result<(), ServiceError> {
    let wait = Duration::from_millis(due.saturating_sub(now_ms()).max(MIN_TIMER_WAIT_MS))
        .min(Duration::from_millis(topology::MIN_DELAY_COVERAGE_MS));
    let body = protocol::encode(&Control::Deadline {
        task: id.to_owned(),
    })?;
    publisher
        .publish(Outgoing {
            exchange: topology::DELAY_EXCHANGE,
            routing_key: topology::CONTROL_QUEUE,
            body: &body,
            properties: topology::delayed(amqp::persistent(protocol::MSGPACK), wait),
            mandatory: true,
        })
        .await?;
    Ok(())
}
