//! The live updates of a running task's page: `GET /tasks/{id}/events`, server-sent events of
//! the task's state, progress and node states, sent when `chorus.events` says something
//! happened to the task (an exclusive, auto-delete queue bound to `task.*` and `subtask.*`, as
//! a dashboard listener of docs/protocol.md does), and at least every [`FALLBACK`] since
//! `subtask.<status>` events are published only for tasks that ask for them. The stream ends
//! after the task's outcome (the page then reloads itself to show it).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use futures::StreamExt;
use lapin::{
    options::QueueBindOptions,
    types::{FieldTable, ShortString},
    Channel, Consumer,
};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    pages::{graph_of, GraphView, TypeRow},
    svg::MAX_DRAWN,
    Shared,
};
use crate::{amqp, topology};

/// Longest time between two reads of the task while it runs without events.
const FALLBACK: Duration = Duration::from_secs(1);
/// Shortest time between two reads: a burst of events costs one read.
const COALESCE: Duration = Duration::from_millis(100);
/// Routing keys bound: task outcomes and subtask events (docs/protocol.md).
const BINDINGS: [&str; 2] = ["task.*", "subtask.*"];

/// One update of the page.
#[derive(Debug, Serialize, PartialEq)]
struct Update {
    /// The task's state (`running`, ...) or its outcome's status once finished.
    state: String,
    finished: bool,
    settled: u64,
    total: u64,
    /// Progress per worker type, in the order of the page's table.
    types: Vec<TypeRow>,
    /// State of each drawn node, by index (`data-node`).
    nodes: Vec<&'static str>,
}

/// `GET /tasks/{id}/events`: the stream of [`Update`]s as `update` events.
pub(super) async fn events(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let consumer = match subscribe(&app).await {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::warn!(%error, "dashboard: cannot consume chorus.events; live updates by polling");
            None
        }
    };
    let (sender, mut receiver) = mpsc::channel::<Event>(4);
    tokio::spawn(feed(app, id, consumer, sender));
    let stream =
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A consumer of a fresh exclusive queue bound to the task and subtask events.
async fn subscribe(app: &Shared) -> Result<Option<(Channel, Consumer)>, lapin::Error> {
    let channel = app.client.connection().create_channel().await?;
    let (queue, consumer) = topology::private_queue(&channel).await?;
    for key in BINDINGS {
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(topology::EVENTS_EXCHANGE),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(Some((channel, consumer)))
}

/// The task id an event is about: `task` of a subtask event, `id` of an outcome.
fn event_task(body: &[u8]) -> Option<String> {
    let value: rmpv::Value = rmp_serde::from_slice(body).ok()?;
    let map = value.as_map()?;
    ["task", "id"].iter().find_map(|name| {
        map.iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
    })
}

/// Sends an update whenever the task changed, until it finished or the page went away; then
/// closes the channel (which deletes the queue).
async fn feed(
    app: Shared,
    id: String,
    consumer: Option<(Channel, Consumer)>,
    sender: mpsc::Sender<Event>,
) {
    let (channel, mut consumer) = match consumer {
        Some((channel, consumer)) => (Some(channel), Some(consumer)),
        None => (None, None),
    };
    let mut last: Option<Update> = None;
    loop {
        let update = read(&app, &id).await;
        let finished = update.as_ref().is_none_or(|u| u.finished);
        if let Some(update) = update {
            if last.as_ref() != Some(&update) {
                let Ok(json) = serde_json::to_string(&update) else {
                    break;
                };
                let event = Event::default().event("update").data(json);
                if sender.send(event).await.is_err() {
                    break;
                }
                last = Some(update);
            }
        }
        if finished {
            break;
        }
        tokio::select! {
            () = wait_for_news(&mut consumer, &id) => {}
            () = app.shutdown.cancelled() => break,
        }
        if sender.is_closed() {
            break;
        }
    }
    if let Some(channel) = channel {
        drop(
            channel
                .close(amqp::REPLY_SUCCESS, ShortString::from("done"))
                .await,
        );
    }
}

/// Returns when an event about task `id` arrives (after [`COALESCE`]) or after [`FALLBACK`].
async fn wait_for_news(consumer: &mut Option<Consumer>, id: &str) {
    let deadline = tokio::time::Instant::now() + FALLBACK;
    let Some(events) = consumer.as_mut() else {
        tokio::time::sleep_until(deadline).await;
        return;
    };
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => return,
            Ok(Some(Ok(delivery))) => {
                if event_task(&delivery.data).as_deref() == Some(id) {
                    tokio::time::sleep(COALESCE).await;
                    return;
                }
            }
            Ok(Some(Err(_)) | None) => {
                *consumer = None;
                tokio::time::sleep_until(deadline).await;
                return;
            }
        }
    }
}

/// The task's state now; `None` when it is unknown or Redis failed (the stream ends: the
/// page keeps what it shows).
async fn read(app: &Shared, id: &str) -> Option<Update> {
    let status = app.client.status(id).await.ok()??;
    let nodes = match graph_of(app, id).await.ok()? {
        GraphView::Shown(graph, _) => graph
            .nodes
            .iter()
            .take(MAX_DRAWN)
            .map(|n| n.state.as_str())
            .collect(),
        GraphView::Missing(_) => Vec::new(),
    };
    Some(Update {
        state: status
            .status
            .map_or(status.state, |s| s.as_str())
            .to_owned(),
        finished: status.status.is_some(),
        settled: status.settled,
        total: status.subtasks,
        types: status.types.iter().map(TypeRow::from).collect(),
        nodes,
    })
}
