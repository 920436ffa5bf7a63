//! The raw broker path that `chorus-bench` measures Chorus against: a producer, a relay and a
//! consumer over two persistent, confirmed queue hops (the least a subtask's trip costs), and
//! the latency floor of those hops alone. Plain lapin, no Chorus code.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chorus_shared::{amqp, tls::Endpoint};
use futures::{stream::FuturesUnordered, StreamExt};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties, Channel, Connection, Consumer, PublisherConfirm,
};
use tokio::task::JoinHandle;

use crate::MILLIS_PER_SECOND;

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    args
}

/// Deletes `queue` if it exists and declares it anew: a durable quorum queue, or a transient
/// classic one (like a submitter's reply queue).
async fn fresh_queue(connection: &Connection, queue: &str, quorum: bool) -> Result<()> {
    let channel = connection.create_channel().await?;
    // Absent the first time: a failed delete closes only this channel.
    drop(
        channel
            .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
            .await,
    );
    let (options, args) = if quorum {
        (QueueDeclareOptions::durable(), quorum_args())
    } else {
        (QueueDeclareOptions::default(), FieldTable::default())
    };
    connection
        .create_channel()
        .await?
        .queue_declare(ShortString::from(queue), options, args)
        .await?;
    Ok(())
}

async fn confirm_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Prefetch of every raw consumer of the baseline and of the latency floor.
pub(crate) const RAW_PREFETCH: u16 = 100;
/// Most publishes the baseline's producer keeps waiting for their confirm.
const MAX_UNCONFIRMED: usize = 1000;
/// Body of every raw message, the size of a small subtask's.
const RAW_BODY: [u8; 64] = [7; 64];
/// Longest wait for the baseline's next message before it counts as stalled.
const BASELINE_STALL: Duration = Duration::from_secs(120);
/// Longest wait for one message through the four raw hops.
const HOP_FLOOR_STALL: Duration = Duration::from_secs(30);

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(amqp::PERSISTENT)
}

/// The broker under measurement: its nodes (`--amqp-url a,b,c`, TLS files read) and how long
/// one connection attempt to one node may take (`--amqp-connect-timeout-ms`).
pub(crate) struct Broker {
    /// The nodes, in the order given.
    pub(crate) nodes: Vec<Endpoint>,
    /// Longest wait for one node to accept a connection.
    pub(crate) connect_timeout: Duration,
}

/// A connection to the broker under measurement, to the first of its nodes that accepts, as the
/// services open theirs ([`amqp::connect_any`]; TLS files for an `amqps://` URL).
pub(crate) async fn connect(broker: &Broker) -> Result<Connection> {
    Ok(
        amqp::connect_any(&broker.nodes, 0, "chorus-bench", broker.connect_timeout)
            .await?
            .connection,
    )
}

/// Starts consuming `queue` on `channel`.
async fn consume(channel: &Channel, queue: &str) -> lapin::Result<Consumer> {
    channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Publishes `body` persistent to `queue` through the default exchange; returns its confirm.
async fn publish(channel: &Channel, queue: &str, body: &[u8]) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            body,
            persistent(),
        )
        .await
}

/// Closes `connections`; a close that fails changes nothing for the measurement.
pub(crate) async fn close_all(connections: &[&Connection]) {
    for connection in connections {
        drop(
            connection
                .close(amqp::REPLY_SUCCESS, ShortString::from("bye"))
                .await,
        );
    }
}

/// The raw two-hop path: publish persistent + confirmed → consume + publish the "result"
/// persistent + confirmed, then ack → consume + ack. Same queue type as Chorus (quorum),
/// prefetch [`RAW_PREFETCH`]. Returns messages per second through both hops.
pub(crate) async fn baseline(broker: &Broker, n: u64) -> Result<f64> {
    let (hop1, hop2) = ("bench.hop1", "bench.hop2");
    let setup = connect(broker).await?;
    for queue in [hop1, hop2] {
        fresh_queue(&setup, queue, true).await?;
    }
    let worker_in = connect(broker).await?;
    let worker_out = connect(broker).await?;
    let sink = connect(broker).await?;
    let producer = connect(broker).await?;
    let middle = spawn_middle_hop(&worker_in, &worker_out, (hop1, hop2), n).await?;
    let sink_channel = sink.create_channel().await?;
    sink_channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut results = consume(&sink_channel, hop2).await?;

    let started = Instant::now();
    let produce = spawn_producer(confirm_channel(&producer).await?, hop1, n);
    let mut received = 0;
    while received < n {
        let delivery = tokio::time::timeout(BASELINE_STALL, results.next())
            .await
            .context("baseline stalled")?
            .context("sink consumer ended")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        received += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    produce.await??;
    middle.await??;
    close_all(&[&setup, &worker_in, &worker_out, &sink, &producer]).await;
    Ok(n as f64 / elapsed)
}

/// The baseline's middle hop, like a worker: takes `n` messages from `hops.0` (consumed on
/// `consume_on`), republishes each to `hops.1` with a confirm (on `publish_on`), then acks it.
async fn spawn_middle_hop(
    consume_on: &Connection,
    publish_on: &Connection,
    hops: (&'static str, &'static str),
    n: u64,
) -> Result<JoinHandle<Result<()>>> {
    let (from, to) = hops;
    let consume_channel = consume_on.create_channel().await?;
    consume_channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consume(&consume_channel, from).await?;
    let publish_channel = Arc::new(confirm_channel(publish_on).await?);
    Ok(tokio::spawn(async move {
        let mut in_flight = FuturesUnordered::new();
        let mut done = 0;
        while done < n {
            tokio::select! {
                Some(delivery) = deliveries.next() => {
                    let delivery = delivery?;
                    let channel = Arc::clone(&publish_channel);
                    in_flight.push(async move {
                        publish(&channel, to, &delivery.data).await?.await?;
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                        Ok::<(), lapin::Error>(())
                    });
                }
                Some(result) = in_flight.next() => {
                    result?;
                    done += 1;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    }))
}

/// Publishes `n` raw messages to `queue` on `publisher` (in confirm mode), with at most
/// [`MAX_UNCONFIRMED`] of them waiting for their confirm.
fn spawn_producer(
    publisher: Channel,
    queue: &'static str,
    n: u64,
) -> JoinHandle<lapin::Result<()>> {
    tokio::spawn(async move {
        let mut confirms = FuturesUnordered::new();
        for _ in 0..n {
            confirms.push(publish(&publisher, queue, &RAW_BODY).await?);
            while confirms.len() >= MAX_UNCONFIRMED {
                if let Some(confirm) = confirms.next().await {
                    confirm?;
                }
            }
        }
        while let Some(confirm) = confirms.next().await {
            confirm?;
        }
        Ok::<(), lapin::Error>(())
    })
}

/// The floor under a small task's latency: one message at a time through the four hops a
/// task's outcome waits for (request → planner, subtask → worker, result → synthesizer on
/// quorum queues, outcome → submitter on a classic reply queue), each relay publishing
/// persistent + confirmed before acking, like the services. Returns milliseconds per message.
pub(crate) async fn hop_floor(broker: &Broker, messages: usize) -> Result<Vec<f64>> {
    let queues = ["bench.lat1", "bench.lat2", "bench.lat3", "bench.lat4"];
    let setup = connect(broker).await?;
    for (index, queue) in queues.iter().enumerate() {
        fresh_queue(&setup, queue, index < 3).await?;
    }
    let relays = connect(broker).await?;
    let mut tasks = Vec::new();
    for pair in queues.windows(2) {
        tasks.push(spawn_relay(&relays, pair[0], pair[1]).await?);
    }
    let client = connect(broker).await?;
    let sink = client.create_channel().await?;
    let mut arrivals = consume(&sink, queues[3]).await?;
    let producer = confirm_channel(&client).await?;
    let mut samples = Vec::with_capacity(messages);
    for _ in 0..messages {
        let started = Instant::now();
        let confirm = publish(&producer, queues[0], &RAW_BODY).await?;
        let delivery = tokio::time::timeout(HOP_FLOOR_STALL, arrivals.next())
            .await
            .context("hop floor stalled")?
            .context("hop floor consumer ended")??;
        samples.push(started.elapsed().as_secs_f64() * MILLIS_PER_SECOND);
        delivery.acker.ack(BasicAckOptions::default()).await?;
        confirm.await?;
    }
    for task in tasks {
        task.abort();
    }
    close_all(&[&setup, &relays, &client]).await;
    Ok(samples)
}

/// One relay of the latency floor, like a service: each message of `from` is published to
/// `to` with a confirm, then acked.
async fn spawn_relay(
    relays: &Connection,
    from: &'static str,
    to: &'static str,
) -> Result<JoinHandle<lapin::Result<()>>> {
    let consume_channel = relays.create_channel().await?;
    consume_channel
        .basic_qos(RAW_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = consume(&consume_channel, from).await?;
    let publish_channel = confirm_channel(relays).await?;
    Ok(tokio::spawn(async move {
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery?;
            publish(&publish_channel, to, &delivery.data).await?.await?;
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok::<(), lapin::Error>(())
    }))
}
