//! Results of subtasks that settle at the same moment go to `chorus.results` as one message.
//! Nothing waits on a timer to fill a message: the sender gives the handlers that settle with
//! the first result a turn of the scheduler, and a few more while subtasks are still being
//! handled, then sends whatever is queued together, so a lone result leaves at once, and under
//! load the broker and the synthesizer see a few messages where there were many. Each subtask
//! is still acked only once its own result is confirmed.

use chorus_shared::{
    amqp::Publisher,
    error::{BrokerError, ServiceError},
    protocol::{self, ResultMessage},
    publish,
};
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{mpsc, oneshot};

/// Most results in one message (fewer when they would pass a quarter of
/// `--max-message-bytes`).
const MOST_TOGETHER: usize = 100;

/// Most turns of the scheduler the sender gives other handlers before sending, while some are
/// still running: microseconds when nothing else is runnable. In packet captures of 3-subtask
/// tasks, eight turns sent 1.5 result messages per task against 1.7 with one. A turn is also a
/// poll of the runtime's I/O driver (a system call), so none is taken past the first once no
/// subtask is being handled: no result could join.
const YIELDS: usize = 8;

/// A result waiting to go out, and who waits for its confirm.
struct Queued {
    encoded: Vec<u8>,
    confirmed: oneshot::Sender<Result<(), String>>,
}

/// Sends results, together when they come together. One per broker session: it stops with the
/// session's publisher.
pub struct ResultSender {
    queue: mpsc::UnboundedSender<Queued>,
    handling: Arc<AtomicUsize>,
}

/// A subtask being handled, whose result may join the message being filled: counted from
/// [`ResultSender::handling`] until it is dropped or its result is queued
/// ([`ResultSender::send`]).
pub struct Handling(Arc<AtomicUsize>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ResultSender {
    /// Starts the task that sends what is queued on `publisher`.
    pub fn start(publisher: Publisher, max_message_bytes: usize) -> Self {
        let (queue, mut queued) = mpsc::unbounded_channel::<Queued>();
        let handling = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handling);
        tokio::spawn(async move {
            while let Some(first) = queued.recv().await {
                let mut group = vec![first];
                // Handlers woken or spawned with this one (subtasks delivered together) finish
                // first: one turn always, since a handler spawned on another thread may not be
                // counted yet; more only while some are still running.
                for turn in 0..YIELDS {
                    if turn > 0 && counted.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    tokio::task::yield_now().await;
                    while group.len() < MOST_TOGETHER {
                        match queued.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                }
                // Sent on its own task, so that results queued while these wait for their
                // confirms go out meanwhile.
                let publisher = publisher.clone();
                tokio::spawn(async move {
                    let (encoded, waiting): (Vec<Vec<u8>>, Vec<_>) = group
                        .into_iter()
                        .map(|queued| (queued.encoded, queued.confirmed))
                        .unzip();
                    let sent =
                        publish::publish_encoded_results(&publisher, &encoded, max_message_bytes)
                            .await
                            .map_err(|error| error.to_string());
                    for confirmed in waiting {
                        // A waiter that is gone (its attempt dropped) has nothing to ack.
                        drop(confirmed.send(sent.clone()));
                    }
                });
            }
        });
        Self { queue, handling }
    }

    /// Counts a subtask as being handled until the returned guard is dropped or handed to
    /// [`ResultSender::send`]: while any is, the sender waits a few turns for their results.
    pub fn handling(&self) -> Handling {
        self.handling.fetch_add(1, Ordering::AcqRel);
        Handling(Arc::clone(&self.handling))
    }

    /// Publishes `result` (with whatever else is being sent now) and waits for its confirm;
    /// `handling` (the subtask's count) ends as the result is queued.
    ///
    /// # Errors
    /// The result does not encode, or the broker did not confirm it.
    pub async fn send(
        &self,
        result: &ResultMessage,
        handling: Handling,
    ) -> Result<(), ServiceError> {
        let encoded = protocol::encode(result)?;
        let (confirmed, confirm) = oneshot::channel();
        let lost = || ServiceError::Broker(BrokerError::ConnectionLost);
        let queued = self.queue.send(Queued { encoded, confirmed });
        drop(handling);
        queued.map_err(|_| lost())?;
        match confirm.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ServiceError::Broker(BrokerError::Shared(reason))),
            Err(_) => Err(lost()),
        }
    }
}
