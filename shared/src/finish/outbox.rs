//! Publishing released subtasks: those that results, a review round or the plan released
//! (dependencies met, a slot under the cap), and those a process released but crashed before
//! publishing, which wait in the task's `outbox` until their publication is confirmed.

use super::Finisher;
use crate::{
    error::ServiceError,
    protocol::PlanEntry,
    publish::{self, TaskContext},
    store::{TaskRecord, TaskState},
};

impl Finisher {
    /// Publishes subtasks a script released (their messages carry review round `round`), then
    /// clears them from the outbox.
    ///
    /// # Errors
    /// Redis or the broker failed; the outbox keeps them for the next attempt.
    pub async fn publish_released(
        &self,
        id: &str,
        record: &TaskRecord,
        round: u32,
        released: &[PlanEntry],
    ) -> Result<(), ServiceError> {
        if released.is_empty() {
            return Ok(());
        }
        let options = record.resolved_options(id)?;
        let context = TaskContext {
            task: id,
            kind: &record.kind,
            options: &options,
            created_ms: record.created_ms,
            max_message_bytes: self.max_message_bytes,
            round,
            fingerprint: record.fingerprint.as_deref(),
        };
        publish::publish_entries(&self.store, &self.publisher, context, released).await?;
        self.store.clear_outbox(id, released).await?;
        Ok(())
    }

    /// Publishes what a crashed process released but did not publish (the outbox).
    ///
    /// # Errors
    /// Redis or the broker failed.
    pub async fn flush_outbox(&self, id: &str) -> Result<(), ServiceError> {
        let Some(record) = self.store.task(id).await? else {
            return Ok(());
        };
        if record.state == TaskState::Finished {
            return Ok(());
        }
        let released = self.store.outbox(id).await?;
        if !released.is_empty() {
            tracing::info!(
                task = id,
                subtasks = released.len(),
                "publishing subtasks released before a crash"
            );
        }
        // Read before the outbox: a round that began in between makes these look older than
        // they are, so their results count as duplicates (which flush again) and never as a
        // later round's.
        self.publish_released(id, &record, record.round, &released)
            .await
    }
}
