//! What a queue holds, as a passive `queue.declare` reports it (the broker answers with its
//! ready messages and consumers, or closes the channel with 404 when the queue does not exist:
//! AMQP 0-9-1, `queue.declare` with `passive`).

use lapin::{
    options::QueueDeclareOptions,
    types::{FieldTable, ShortString},
    Connection,
};

use crate::error::BrokerError;

/// A queue's counts at the moment of asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not those delivered and unacked).
    pub ready: u32,
    /// Consumers on the queue.
    pub consumers: u32,
}

/// The counts of `queue`, or `None` when it does not exist. Asked on a channel of its own,
/// since a passive declare of a missing queue closes the channel it ran on.
///
/// # Errors
/// The connection is gone (a missing queue is `Ok(None)`).
pub async fn queue_counts(
    connection: &Connection,
    queue: &str,
) -> Result<Option<QueueCounts>, BrokerError> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let counts = match declared {
        Ok(declared) => QueueCounts {
            ready: declared.message_count(),
            consumers: declared.consumer_count(),
        },
        Err(_) if connection.status().connected() => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    drop(
        channel
            .close(super::REPLY_SUCCESS, ShortString::from("done"))
            .await,
    );
    Ok(Some(counts))
}
