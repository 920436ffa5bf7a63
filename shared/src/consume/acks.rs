//! Acks of one consumer's channel, sent together: a job hands its settled delivery over and
//! goes on, and the acks leave within [`ACK_DELAY`] of the first one waiting (at once when an
//! eighth of the prefetch is waiting). Those that run from the lowest unacked delivery of the
//! channel go as one `basic.ack` with `multiple` set, which acks every delivery up to its tag
//! (AMQP 0-9-1, `basic.ack`); the others go one by one, in the same write. On a quorum queue
//! each `basic.ack` is a settle command through the queue's Raft log, so a task's subtasks
//! acked together cost the broker one command instead of one per message.
//!
//! A delivery is acked only once its job settled it, never by another's `multiple`: that
//! covers only deliveries all settled, since every delivery taken from the channel is counted
//! as unacked ([`Acks::taken`]) before its job starts, and the broker numbers a channel's
//! deliveries in the order the consumer takes them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{message::Delivery, options::BasicAckOptions};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::error::BrokerError;

#[cfg(test)]
mod tests;

/// Longest wait of a settled delivery for the acks it goes with. Short beside any redelivery
/// it could cause (a crash in between hands the message to another consumer, whose result the
/// fan-in then ignores as a duplicate) and beside a prefetch's worth of handling.
pub(super) const ACK_DELAY: Duration = Duration::from_millis(1);

/// Share of the prefetch that, waiting to be acked, is sent without waiting longer: so that the
/// broker never holds back deliveries for want of acks still sitting here.
const FLUSH_SHARE: u16 = 8;

/// A delivery tag: the broker's number of a delivery on its channel.
type Tag = u64;

/// The acks of one channel (see the module's documentation).
pub(super) struct Acks {
    settled: mpsc::UnboundedSender<Arc<Delivery>>,
    unacked: Arc<Mutex<BTreeSet<Tag>>>,
}

impl Acks {
    /// Starts the task that sends the acks of a channel consumed with `prefetch`; it calls
    /// `failed` with the error when acks cannot be sent (the channel or its connection is gone),
    /// and ends, having sent what it holds, once `closing` is cancelled or every [`Acks`] handle
    /// is dropped.
    pub(super) fn start(
        prefetch: u16,
        closing: CancellationToken,
        failed: impl Fn(BrokerError) + Send + 'static,
    ) -> (Self, JoinHandle<()>) {
        let (settled, mut waiting) = mpsc::unbounded_channel::<Arc<Delivery>>();
        let unacked = Arc::new(Mutex::new(BTreeSet::new()));
        let flush_at = usize::from((prefetch / FLUSH_SHARE).max(1));
        let books = Arc::clone(&unacked);
        let task = tokio::spawn(async move {
            while let Some(first) = tokio::select! {
                first = waiting.recv() => first,
                () = closing.cancelled() => waiting.try_recv().ok(),
            } {
                let mut ready = BTreeMap::from([(first.delivery_tag, first)]);
                let until = Instant::now() + ACK_DELAY;
                while ready.len() < flush_at && !closing.is_cancelled() {
                    match tokio::time::timeout_at(until, waiting.recv()).await {
                        Ok(Some(next)) => {
                            ready.insert(next.delivery_tag, next);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                while let Ok(next) = waiting.try_recv() {
                    ready.insert(next.delivery_tag, next);
                }
                if let Err(error) = send(&books, ready).await {
                    failed(error);
                }
            }
        });
        (Self { settled, unacked }, task)
    }

    /// Counts `tag` as unacked: called for each delivery as it is taken from the consumer, in
    /// order, before its job starts.
    pub(super) fn taken(&self, tag: Tag) {
        if let Ok(mut unacked) = self.unacked.lock() {
            unacked.insert(tag);
        }
    }

    /// Hands over a delivery its job settled, to be acked with the next acks sent.
    ///
    /// # Errors
    /// The task sending acks is gone (the session is ending): the broker will redeliver it.
    pub(super) fn settled(&self, delivery: Arc<Delivery>) -> Result<(), BrokerError> {
        self.settled
            .send(delivery)
            .map_err(|_| BrokerError::AckLost)
    }
}

/// Which acks to send for the `ready` deliveries of a channel with `unacked` deliveries (ready
/// ones included): the last tag of the run of ready deliveries from the lowest unacked one, to
/// be acked with `multiple` when the run has more than one, and the other ready tags, each
/// acked alone. Takes every ready tag out of `unacked`.
pub(super) fn plan(unacked: &mut BTreeSet<Tag>, ready: &BTreeSet<Tag>) -> (Option<Tag>, Vec<Tag>) {
    let run: BTreeSet<Tag> = unacked
        .iter()
        .take_while(|tag| ready.contains(tag))
        .copied()
        .collect();
    let multiple = run.last().copied().filter(|_| run.len() > 1);
    let alone = ready
        .iter()
        .filter(|tag| multiple.is_none() || !run.contains(tag))
        .copied()
        .collect();
    for tag in ready {
        unacked.remove(tag);
    }
    (multiple, alone)
}

/// Sends the acks of `ready` (by tag) on their channel, as [`plan`] groups them, in one write.
async fn send(
    unacked: &Mutex<BTreeSet<Tag>>,
    mut ready: BTreeMap<Tag, Arc<Delivery>>,
) -> Result<(), BrokerError> {
    let tags: BTreeSet<Tag> = ready.keys().copied().collect();
    let (multiple, alone) = match unacked.lock() {
        Ok(mut unacked) => plan(&mut unacked, &tags),
        Err(_) => (None, tags.into_iter().collect()),
    };
    let acks = multiple
        .map(|tag| (tag, true))
        .into_iter()
        .chain(alone.into_iter().map(|tag| (tag, false)))
        .filter_map(|(tag, multiple)| Some((ready.remove(&tag)?, multiple)));
    let sent = futures::future::join_all(acks.map(|(delivery, multiple)| async move {
        delivery.acker.ack(BasicAckOptions { multiple }).await
    }))
    .await;
    for ack in sent {
        // lapin answers `false` when the channel is already gone: the broker redelivers.
        if !ack? {
            return Err(BrokerError::AckLost);
        }
    }
    Ok(())
}
