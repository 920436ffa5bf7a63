//! The dashboard's pages: what each shows, read from Redis (`admin::tasks`, the task's status,
//! outcome and graph) and RabbitMQ (`admin::dead`), as template contexts. Everything from a
//! task goes to the templates as data, which escape it.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
    Form,
};
use serde::{Deserialize, Serialize};

use super::{error_page, render, svg, Shared, DEAD_LIMIT, TASKS_LIMIT};
use crate::{
    admin::{
        dead,
        graph::{self, GraphError, TaskGraph},
        tasks,
    },
    client::{TaskStatus, TypeStatus},
    protocol::Outcome,
};

/// Longest error message shown, in bytes (cut with a marker past it).
const MAX_ERROR_BYTES: usize = 2000;

/// `?kind=...&status=...` of the tasks page; empty means any.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TasksQuery {
    kind: Option<String>,
    status: Option<String>,
}

/// The tasks page: the index's tasks that pass the filter, newest first.
pub(super) async fn tasks(State(app): State<Shared>, Query(query): Query<TasksQuery>) -> Response {
    let given = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = tasks::Filter {
        kind: given(query.kind),
        status: given(query.status),
        limit: TASKS_LIMIT,
    };
    let found = match tasks::list(app.client.store(), &filter).await {
        Ok(found) => found,
        Err(error) => return unavailable(&app, &error.to_string()),
    };
    let rows: Vec<_> = found
        .iter()
        .map(|t| {
            minijinja::context! {
                id => t.id,
                href => task_href(&t.id),
                kind => t.kind,
                status => t.status,
                submitted => tasks::rfc3339(t.submitted_ms),
                finished => t.finished_ms.map(tasks::rfc3339),
                settled => t.settled,
                subtasks => t.subtasks,
            }
        })
        .collect();
    render(
        &app,
        "tasks.html",
        minijinja::context! {
            title => "Tasks",
            rows => rows,
            kind => filter.kind,
            status => filter.status,
            statuses => ["running", "planning", "planned", "succeeded", "partial", "failed", "rejected", "cancelled"],
            limit => TASKS_LIMIT,
        },
    )
}

/// The link of task `id`'s page: every byte but RFC 3986's unreserved ones percent-encoded,
/// since an id may hold anything a path would read as syntax.
pub(super) fn task_href(id: &str) -> String {
    let mut href = String::from("/tasks/");
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            href.push(char::from(byte));
        } else {
            href.push_str(&format!("%{byte:02X}"));
        }
    }
    href
}

/// One worker type's line of progress.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(super) struct TypeRow {
    pub worker_type: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Held by a worker ([`TypeStatus::running`]).
    pub running: u64,
    /// Neither settled nor held by a worker: queued, or waiting for dependencies or a slot.
    pub pending: u64,
    pub note: Option<String>,
}

impl From<&TypeStatus> for TypeRow {
    fn from(t: &TypeStatus) -> Self {
        let p = &t.progress;
        let running = t.running();
        Self {
            worker_type: p.worker_type.clone(),
            total: p.total,
            succeeded: p.succeeded,
            failed: p.failed,
            skipped: p.skipped,
            running,
            pending: p
                .total
                .saturating_sub(p.succeeded + p.failed + p.skipped + running),
            note: t.note.clone(),
        }
    }
}

/// What the task page and its live updates show of the graph: the graph (live, or the copy
/// kept with the outcome) or why there is none.
pub(super) enum GraphView {
    /// The graph and the number of subtasks in the plan (more than the graph holds when only
    /// the first [`graph::KEPT_NODES`] were kept).
    Shown(TaskGraph, usize),
    Missing(String),
}

/// The graph of task `id` while it runs, else the copy kept with its outcome.
pub(super) async fn graph_of(app: &Shared, id: &str) -> Result<GraphView, String> {
    match graph::read(app.client.store(), id).await {
        Ok(graph) => {
            let total = graph.nodes.len();
            Ok(GraphView::Shown(graph, total))
        }
        Err(GraphError::Store(e)) => Err(e.to_string()),
        Err(GraphError::Finished(_)) => match graph::kept(app.client.store(), id).await {
            Ok(Some((graph, total))) => Ok(GraphView::Shown(graph, total)),
            Ok(None) => Ok(GraphView::Missing(
                "The graph of this task was not kept (it finished before the services kept \
                 graphs, or its record expired)."
                    .to_owned(),
            )),
            Err(e) => Err(e.to_string()),
        },
        Err(e @ GraphError::Unknown(_)) => Ok(GraphView::Missing(e.to_string())),
    }
}

/// The task page.
pub(super) async fn task(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let status = match app.client.status(&id).await {
        Ok(Some(status)) => status,
        Ok(None) => {
            return error_page(
                &app,
                StatusCode::NOT_FOUND,
                &format!("No task {id} (unknown, or its record expired)."),
            )
        }
        Err(error) => return unavailable(&app, &error.to_string()),
    };
    let outcome = match status.status {
        Some(_) => match app.client.outcome(&id).await {
            Ok(outcome) => outcome,
            Err(error) => return unavailable(&app, &error.to_string()),
        },
        None => None,
    };
    let graph = match graph_of(&app, &id).await {
        Ok(graph) => graph,
        Err(error) => return unavailable(&app, &error),
    };
    render(
        &app,
        "task.html",
        task_context(&id, &status, outcome.as_ref(), &graph),
    )
}

/// The task page's context.
fn task_context(
    id: &str,
    status: &TaskStatus,
    outcome: Option<&Outcome>,
    graph: &GraphView,
) -> minijinja::Value {
    let types: Vec<TypeRow> = status.types.iter().map(TypeRow::from).collect();
    let (svg, nodes, graph_note) = match graph {
        GraphView::Shown(graph, total) => {
            let drawn = graph.nodes.len().min(svg::MAX_DRAWN);
            let note = (*total > drawn)
                .then(|| format!("Graph of the first {drawn} subtasks of {total}."));
            let nodes: Vec<_> = graph.nodes[..drawn]
                .iter()
                .map(|n| {
                    minijinja::context! {
                        id => n.id,
                        worker_type => n.worker_type,
                        state => n.state.as_str(),
                        attempts => n.attempts,
                        error => n.error.as_deref().map(bounded),
                    }
                })
                .collect();
            (svg::draw(graph), nodes, note)
        }
        GraphView::Missing(why) => (None, Vec::new(), Some(why.clone())),
    };
    let errors = errors_of(outcome, graph);
    let tokens: BTreeMap<&String, _> = status
        .tokens
        .iter()
        .map(|(model, t)| (model, minijinja::Value::from_serialize(t)))
        .collect();
    minijinja::context! {
        title => format!("Task {id}"),
        id => id,
        events => format!("{}/events", task_href(id)),
        kind => status.kind,
        state => status.state,
        outcome_status => status.status.map(|s| s.as_str()),
        live => status.status.is_none(),
        total => status.subtasks,
        settled => status.settled,
        retries => status.retries,
        round => status.round,
        types => types,
        errors => errors,
        tokens => tokens,
        cost => status.cost,
        duration_ms => outcome.map(|o| o.stats.duration_ms),
        svg => svg,
        nodes => nodes,
        graph_note => graph_note,
    }
}

/// The errors shown: the outcome's once finished, else those of the failed subtasks so far.
fn errors_of(outcome: Option<&Outcome>, graph: &GraphView) -> Vec<minijinja::Value> {
    match (outcome, graph) {
        (Some(outcome), _) => outcome
            .errors
            .iter()
            .map(|e| minijinja::context! { subtask => e.subtask, message => bounded(&e.message) })
            .collect(),
        (None, GraphView::Shown(graph, _)) => graph
            .nodes
            .iter()
            .filter(|n| n.state == graph::NodeState::Failed)
            .map(|n| minijinja::context! { subtask => n.id, message => n.error.as_deref().map(bounded) })
            .collect(),
        (None, GraphView::Missing(_)) => Vec::new(),
    }
}

fn bounded(message: &str) -> String {
    crate::text::bounded(message, MAX_ERROR_BYTES)
}

/// The dead-letter page, with `notice` (what a requeue did) at the top.
pub(super) async fn dead(State(app): State<Shared>) -> Response {
    dead_page(&app, None).await
}

async fn dead_page(app: &Shared, notice: Option<(bool, String)>) -> Response {
    let letters = match dead::list(app.client.connection(), DEAD_LIMIT).await {
        Ok(letters) => letters,
        Err(error) => return unavailable(app, &error.to_string()),
    };
    let rows: Vec<_> = letters
        .iter()
        .map(|l| {
            minijinja::context! {
                key => l.key,
                queue => l.queue,
                reason => l.reason.as_deref().map(bounded),
                task => l.task,
                task_href => l.task.as_deref().map(task_href),
                subtask => l.subtask,
                time => l.time_s.map(|s| tasks::rfc3339(s.saturating_mul(1000))),
                size => l.size,
            }
        })
        .collect();
    render(
        app,
        "dead.html",
        minijinja::context! {
            title => "Dead letters",
            rows => rows,
            limit => DEAD_LIMIT,
            notice => notice.as_ref().map(|(ok, text)| minijinja::context! { ok => ok, text => text }),
        },
    )
}

/// The form of a Requeue button.
#[derive(Debug, Deserialize)]
pub(super) struct RequeueForm {
    key: String,
}

/// `POST /dead/requeue`: sends the dead letter of `key` back to its queue
/// (`admin::dead::requeue`: confirmed before it leaves `chorus.dead`), then shows the page
/// with what happened.
pub(super) async fn requeue(State(app): State<Shared>, Form(form): Form<RequeueForm>) -> Response {
    let keys = [form.key.clone()];
    let done = dead::requeue(
        app.client.connection(),
        app.client.publisher(),
        &keys,
        DEAD_LIMIT,
    )
    .await;
    let notice = match done {
        Ok(requeued) => match requeued.into_iter().next() {
            Some(dead::Requeued {
                error: None, queue, ..
            }) => (
                true,
                format!(
                    "Requeued {} to {}.",
                    form.key,
                    queue.as_deref().unwrap_or("its queue")
                ),
            ),
            Some(dead::Requeued {
                error: Some(error), ..
            }) => (false, format!("Not requeued {}: {error}", form.key)),
            None => (false, format!("Not requeued {}: not found.", form.key)),
        },
        Err(error) => (false, format!("Not requeued {}: {error}", form.key)),
    };
    tracing::info!(key = %crate::text::reason(&form.key), ok = notice.0, "dashboard requeue");
    dead_page(&app, Some(notice)).await
}

fn unavailable(app: &Shared, reason: &str) -> Response {
    error_page(
        app,
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("RabbitMQ or Redis unavailable: {reason}"),
    )
}
