//! Storing an outcome once and delivering it: to every waiter (in its encoding), to
//! `chorus.events` as `task.<status>`, to the parent of a child task (as its subtask's result)
//! and, as cancellations, to the unfinished children of a finished task. Delivery is marked
//! last, so a crash before it means a repeat, never a loss.

use super::{decide, Finisher};
use crate::{
    amqp::{self, Outgoing},
    error::{ServiceError, StoreError},
    observe::metrics,
    protocol::{self, Control, Encoding, Outcome, ParentRef, ReplyTarget, ResultMessage},
    publish,
    store::{Finished, Lease},
    topology,
    usage::Usage,
};

/// Prefix of the routing key of an outcome on `chorus.events`, before its status.
const EVENT_ROUTING_PREFIX: &str = "task.";

/// Attempts a child task's outcome reports for its parent's subtask: the child ran once, however
/// many attempts its own subtasks took.
const CHILD_ATTEMPTS: u32 = 1;

impl Finisher {
    /// Stores `outcome` for a task that ends without running (rejected), then delivers it;
    /// `usage` (what its planner's model calls used, paid even for a plan refused) is added to
    /// its stats and counted with it, once.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe.
    pub async fn conclude(&self, outcome: &Outcome, usage: &[Usage]) -> Result<(), ServiceError> {
        let mut outcome = outcome.clone();
        let stats = &mut outcome.stats;
        crate::usage::add_to_stats(&mut stats.tokens, &mut stats.cost, usage);
        let finished = self
            .store
            .store_outcome(&outcome, usage, self.outcome_ttl, None)
            .await?;
        self.deliver_finished(&outcome.id, finished, None).await
    }

    /// Publishes the stored outcome to every waiter and as an event, then marks it delivered,
    /// releasing the synthesis `lease` it ran under in the same round trip.
    ///
    /// # Errors
    /// Redis or the broker failed; calling again later is safe (waiters may then get a second,
    /// identical copy).
    pub async fn deliver(&self, id: &str, lease: Option<&Lease>) -> Result<(), ServiceError> {
        match self.store.finished_task(id).await? {
            Some(finished) => self.deliver_finished(id, finished, lease).await,
            None => Ok(()),
        }
    }

    /// [`Finisher::deliver`] of what storing the outcome returned.
    pub(super) async fn deliver_finished(
        &self,
        id: &str,
        finished: Finished,
        lease: Option<&Lease>,
    ) -> Result<(), ServiceError> {
        let Finished {
            outcome,
            waiters,
            parent,
            children,
            kind,
        } = finished;
        let delivering = std::time::Instant::now();
        self.publish_outcome(id, &outcome, &waiters).await?;
        if let Some(parent) = parent {
            self.report_to_parent(id, &parent, &outcome).await?;
        }
        self.cancel_children(id, &children, &outcome).await?;
        self.store.mark_delivered(id, lease).await?;
        // Counted at each delivery: one repeated after a crash counts again (at least once).
        metrics::outcome_delivered(delivering.elapsed().as_secs_f64());
        let known = self.registry.get(&kind).is_some();
        metrics::task_finished(
            if known { &kind } else { "(unknown)" },
            outcome.status.as_str(),
        );
        tracing::info!(
            task = id,
            status = outcome.status.as_str(),
            subtasks = outcome.stats.subtasks,
            failed = outcome.stats.failed,
            retries = outcome.stats.retries,
            duration_ms = outcome.stats.duration_ms,
            waiters = waiters.len(),
            "task finished"
        );
        Ok(())
    }

    /// Publishes `outcome` to every waiter and to `chorus.events`, confirms pipelined.
    async fn publish_outcome(
        &self,
        id: &str,
        outcome: &Outcome,
        waiters: &[ReplyTarget],
    ) -> Result<(), ServiceError> {
        let event = protocol::encode(outcome)?;
        let replies: Vec<(&ReplyTarget, Encoding, Vec<u8>)> = waiters
            .iter()
            .map(|waiter| {
                let (encoding, body) = amqp::encode_reply(waiter, outcome, &event);
                (waiter, encoding, body)
            })
            .collect();
        let routing_key = format!("{EVENT_ROUTING_PREFIX}{}", outcome.status.as_str());
        let messages = replies
            .iter()
            .map(|(waiter, encoding, body)| amqp::reply_message(waiter, *encoding, body))
            .chain(std::iter::once(Outgoing {
                exchange: topology::EVENTS_EXCHANGE,
                routing_key: &routing_key,
                body: &event,
                properties: amqp::persistent(protocol::MSGPACK).with_message_id(amqp::short_id(id)),
                mandatory: false,
            }));
        self.publisher.publish_all(messages).await?;
        Ok(())
    }

    /// A child task's outcome becomes the result of its parent's subtask (`parent`: the
    /// encoded [`ParentRef`]).
    async fn report_to_parent(
        &self,
        id: &str,
        parent: &[u8],
        outcome: &Outcome,
    ) -> Result<(), ServiceError> {
        let parent: ParentRef = protocol::decode(parent)
            .map_err(|e| StoreError::Corrupt(format!("parent of task {id}: {e}")))?;
        let result = ResultMessage {
            task: parent.task,
            subtask: parent.subtask,
            attempts: CHILD_ATTEMPTS,
            outcome: decide::child_result(id, outcome)?,
            spawned: Vec::new(),
            round: parent.round,
            // The child's own outcome counts its tokens; the parent's stats do not repeat them.
            usage: Vec::new(),
        };
        publish::publish_result(&self.publisher, &result).await
    }

    /// A finished task's unfinished children are cancelled: their work no longer matters.
    async fn cancel_children(
        &self,
        id: &str,
        children: &[String],
        outcome: &Outcome,
    ) -> Result<(), ServiceError> {
        if children.is_empty() {
            return Ok(());
        }
        let reason = format!("parent task {id} ended {}", outcome.status.as_str());
        let bodies = children
            .iter()
            .map(|child| {
                protocol::encode(&Control::Cancel {
                    task: child.clone(),
                    reason: Some(reason.clone()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher
            .publish_all(bodies.iter().map(|body| Outgoing {
                exchange: "",
                routing_key: topology::CONTROL_QUEUE,
                body,
                properties: amqp::persistent(protocol::MSGPACK),
                mandatory: true,
            }))
            .await?;
        Ok(())
    }

    /// Publishes an outcome to one waiter only (a duplicate submission of a finished task).
    ///
    /// # Errors
    /// The broker failed.
    pub async fn reply(&self, waiter: &ReplyTarget, outcome: &Outcome) -> Result<(), ServiceError> {
        amqp::publish_reply(&self.publisher, waiter, outcome).await
    }
}
