//! The worker's side of rolling out a kind (docs/operations.md, "Rolling out a kind"): a subtask of
//! a kind this worker lacks, or planned with another definition of it, is sent back to its
//! queue through a delay bucket (same attempt, so no attempt is used up) while a live service
//! has what it needs, and said once in the log.

use chorus_shared::{
    error::ServiceError,
    services::{self, Directory, Placement, Route},
    text, topology,
};
use lapin::message::Delivery;

use super::Worker;

/// What a subtask (or a batch, which shares these) is, for placing it.
pub(crate) struct Wanted<'a> {
    pub kind: &'a str,
    pub fingerprint: Option<&'a str>,
    pub worker_type: &'a str,
}

/// Where a message of `wanted` goes in this worker (its kinds: `directory`); reads the announcements
/// (cached) only when this worker lacks the kind or has another definition of it.
///
/// # Errors
/// Redis failed reading the announcements: the message is handled again later.
pub(crate) async fn place(
    directory: &Directory,
    wanted: &Wanted<'_>,
    delivery: &Delivery,
) -> Result<Placement, ServiceError> {
    let local = directory.local(wanted.kind);
    if !services::needs_peers(local, wanted.fingerprint) {
        return Ok(Placement::Run);
    }
    let deferrals = services::deferrals(&delivery.properties);
    let place = |peers: &[services::Announcement]| {
        services::place_subtask(
            local,
            wanted.fingerprint,
            wanted.kind,
            wanted.worker_type,
            peers,
            deferrals,
        )
    };
    let mut placement = place(&directory.peers().await?);
    if placement == Placement::Unknown {
        // Failed for good only on a fresh read: a worker may have started this second.
        placement = place(&directory.peers_now().await?);
    }
    let notice = format!(
        "{:?} {} {}",
        placement,
        wanted.kind,
        wanted.fingerprint.unwrap_or("")
    );
    if placement != Placement::Run && directory.first_time(&notice) {
        let kind = text::bounded(wanted.kind, text::MAX_NAME_BYTES);
        // Fingerprints come from messages: escaped and bounded like any text from one.
        let planned_with = text::bounded(wanted.fingerprint.unwrap_or("-"), text::MAX_NAME_BYTES);
        match (placement, local) {
            (Placement::Defer, None) => {
                tracing::warn!(%kind, "this worker lacks the kind; leaving its subtasks to a live worker that has it (said once)")
            }
            (Placement::Defer, Some(here)) => {
                tracing::warn!(%kind, %planned_with, %here, "this worker has another definition of the kind than its tasks were planned with; leaving their subtasks to a live worker with it (said once)")
            }
            _ => {
                tracing::warn!(%kind, "no live service has the kind, or its subtasks were deferred too often; failing them here (said once)")
            }
        }
    }
    if placement == Placement::Run
        && local.is_some()
        && deferrals > 0
        && directory.first_time(&notice)
    {
        tracing::info!(kind = %text::bounded(wanted.kind, text::MAX_NAME_BYTES), planned_with = %text::bounded(wanted.fingerprint.unwrap_or("-"), text::MAX_NAME_BYTES), "running subtasks planned with another definition of the kind: no live worker has it any more (said once)");
    }
    Ok(placement)
}

impl Worker {
    /// Sends the delivery back to the queue of `worker_type` through the deferral delay bucket.
    ///
    /// # Errors
    /// The broker failed; the delivery is then handled again.
    pub(crate) async fn defer(
        &self,
        worker_type: &str,
        delivery: &Delivery,
    ) -> Result<(), ServiceError> {
        services::defer(
            &self.publisher,
            &topology::subtask_queue(worker_type),
            &delivery.data,
            &delivery.properties,
            Route::DelayBucket,
        )
        .await
    }
}
