//! The orchestrator's side of rolling out a kind (docs/operations.md, "Rolling out a kind"): a task
//! request of a kind this orchestrator lacks is sent back to `chorus.tasks` (not claimed, so
//! not a new task) while a live service has the kind, and refused at once when none does,
//! naming the kinds the live orchestrators know.

use chorus_shared::{
    error::ServiceError,
    services::{self, Placement, Role, Route},
    text, topology,
};
use lapin::message::Delivery;

use super::Orchestrator;

impl Orchestrator {
    /// Whether a request of `kind` was left for another orchestrator (sent back to
    /// `chorus.tasks` after [`services::DEFER_DELAY`], confirmed): the caller then acks it.
    /// `false` when this orchestrator has the kind, or nobody live does.
    ///
    /// # Errors
    /// Redis (the announcements) or the broker failed; the request is handled again.
    pub(crate) async fn deferred(
        &self,
        kind: &str,
        delivery: &Delivery,
    ) -> Result<bool, ServiceError> {
        if self.registry.get(kind).is_some() {
            return Ok(false);
        }
        let deferrals = services::deferrals(&delivery.properties);
        let peers = self.directory.peers().await?;
        if services::place_task(false, kind, &peers, deferrals) != Placement::Defer {
            // Refused for good only on a fresh read: a service may have started this second.
            let peers = self.directory.peers_now().await?;
            if services::place_task(false, kind, &peers, deferrals) != Placement::Defer {
                return Ok(false);
            }
        }
        if self.directory.first_time(kind) {
            tracing::warn!(
                kind = %text::bounded(kind, text::MAX_NAME_BYTES),
                "this orchestrator lacks the kind, which a live service has; leaving its tasks to an orchestrator that has it (said once)"
            );
        }
        services::defer(
            &self.finisher.publisher,
            topology::TASKS_QUEUE,
            &delivery.data,
            &delivery.properties,
            Route::WaitThenDirect,
        )
        .await?;
        Ok(true)
    }

    /// The kinds this orchestrator and the live orchestrators know, for the refusal of a kind
    /// none of them has (this orchestrator's alone when the announcements cannot be read).
    pub(crate) async fn known_kinds(&self) -> String {
        let local = self.registry.names();
        match self.directory.peers_now().await {
            Ok(peers) => services::known_kinds(&local, &peers, Role::Orchestrator).join(", "),
            Err(_) => local.join(", "),
        }
    }
}
