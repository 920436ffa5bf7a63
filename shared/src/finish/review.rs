//! Review rounds: the kind's review of a settled round, which may send subtasks back for
//! another round.

use std::collections::HashSet;

use super::Finisher;
use crate::{
    failpoint, graph,
    kinds::{self, TaskView},
    store::{Lease, TaskRecord},
};

impl Finisher {
    /// Runs the kind's review of round `record.round` of `task` over `outputs` (in plan order; `order`
    /// is the plan, which additions must not collide with); when it sends subtasks back,
    /// records the next round (with the review's usage, taken from `task.usage`) and publishes
    /// what it releases. `Ok(true)` when another round runs; otherwise the review's usage stays
    /// in `task.usage`, for the outcome.
    ///
    /// # Errors
    /// The kind is unknown, the review failed, panicked or returned a bad subtask, or the next
    /// round could not be recorded or published: a message for the outcome.
    pub(super) async fn review(
        &self,
        task: &TaskView,
        record: &TaskRecord,
        outputs: &[(String, Vec<u8>)],
        order: &[String],
        lease: &Lease,
    ) -> Result<bool, String> {
        let (kind, inline) = self.kind_for(record, outputs.len())?;
        let (input, round) = (record.input.clone(), record.round);
        let id = task.id.as_str();
        let ids: Vec<String> = outputs.iter().map(|(id, _)| id.clone()).collect();
        let subtasks = self
            .store
            .entries(id, &ids)
            .await
            .map_err(|e| format!("cannot read the subtasks of round {round}: {e}"))?;
        let outputs = outputs.to_vec();
        let mut view = task.clone();
        view.subtasks = subtasks;
        let reviewed = match kinds::run_kind_code_retrying(inline, "review", move || {
            kind.review(&view, &input, &outputs, round)
        })
        .await
        {
            Ok(Ok(reviewed)) => reviewed,
            Ok(Err(error)) => return Err(format!("review of round {round} failed: {error}")),
            Err(panic) => return Err(format!("review of round {round} panicked: {panic}")),
        };
        let Some(entries) = reviewed.filter(|entries| !entries.is_empty()) else {
            return Ok(false);
        };
        let existing: HashSet<String> = order.iter().cloned().collect();
        graph::check_additions(&entries, &existing)
            .map_err(|e| format!("review of round {round} returned a bad subtask: {e}"))?;
        tracing::info!(
            task = id,
            round,
            redo = entries.len(),
            "review sent subtasks back; next round"
        );
        // The review's calls are counted with the round they sent back; when that cannot be
        // recorded they go back to the meter, to be counted with the failed outcome.
        let usage = task.usage.take();
        let released = match self.store.revise(id, lease, &entries, &usage).await {
            Ok(released) => released,
            Err(e) => {
                task.usage.record(usage);
                return Err(format!("cannot record round {}: {e}", round + 1));
            }
        };
        self.publish_released(id, record, round + 1, &released)
            .await
            .map_err(|e| format!("cannot publish round {}: {e}", round + 1))?;
        failpoint::hit("synthesizer.after-review-published").await;
        Ok(true)
    }
}
