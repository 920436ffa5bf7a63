//! Leaving a settled task to another synthesizer: when this process lacks the task's kind, or
//! has another definition of it than the task was planned with, and a live synthesizer
//! announces the right one (`crate::services`), its review or synthesis is not run here. A
//! `settle` nudge for the task goes through a delay bucket to `chorus.control`, which every
//! synthesizer consumes, so the task never waits on a result that will not come again; the
//! nudge counts its hops, and past [`crate::services::MAX_DEFERRALS`] the task is finished by
//! whichever synthesizer gets it.

use super::Finisher;
use crate::{
    amqp::{self, Outgoing},
    error::ServiceError,
    protocol::{self, Control},
    services::{self, Placement},
    store::TaskRecord,
    text, topology,
};

impl Finisher {
    /// Whether task `id` (its `record` read under the synthesis lease, `hops` hand-overs so
    /// far) is handed over: if so the nudge is published (confirmed) and the caller releases
    /// the lease without running anything.
    ///
    /// # Errors
    /// Redis (reading the announcements) or the broker failed.
    pub(super) async fn hand_over(
        &self,
        id: &str,
        record: &TaskRecord,
        hops: u32,
    ) -> Result<bool, ServiceError> {
        let Some(directory) = &self.directory else {
            return Ok(false);
        };
        let local = directory.local(&record.kind);
        let wanted = record.fingerprint.as_deref();
        if !services::needs_peers(local, wanted) {
            return Ok(false);
        }
        let peers = directory.peers().await?;
        let placement = services::place_synthesis(local, wanted, &record.kind, &peers, hops);
        if placement != Placement::Defer {
            return Ok(false);
        }
        let notice = format!("synthesis {} {}", record.kind, wanted.unwrap_or(""));
        if directory.first_time(&notice) {
            tracing::warn!(
                kind = %text::bounded(&record.kind, text::MAX_NAME_BYTES),
                planned_with = %text::bounded(wanted.unwrap_or("-"), text::MAX_NAME_BYTES),
                here = local.unwrap_or("-"),
                "this synthesizer lacks the definition tasks of this kind were planned with; leaving them to a live synthesizer that has it (said once)"
            );
        }
        let body = protocol::encode(&Control::Settle {
            task: id.to_owned(),
            hops: hops.saturating_add(1),
        })?;
        self.publisher
            .publish(Outgoing {
                exchange: topology::DELAY_EXCHANGE,
                routing_key: topology::CONTROL_QUEUE,
                body: &body,
                properties: topology::delayed(
                    amqp::persistent(protocol::MSGPACK),
                    services::DEFER_DELAY,
                ),
                mandatory: true,
            })
            .await?;
        Ok(true)
    }
}
