//! `chorus dashboard` (issue 19): a small web UI served by the CLI itself — the recent and
//! running tasks (`/tasks`, filtered by kind and status), a task's page (`/tasks/{id}`: state,
//! progress per worker type, errors, tokens and cost, the subtasks as a dependency graph
//! coloured by state, live through server-sent events fed by `chorus.events`), and the dead
//! letters of `chorus.dead` with a Requeue button each (`/dead`). Pages are rendered on the
//! server with minijinja (HTML auto-escaping: ids, kinds, errors and reasons come from tasks
//! and are hostile text) and work without JavaScript; the embedded script only makes a running
//! task's page live. It has no authentication: it listens on loopback by default
//! (docs/operations.md#dashboard).

mod live;
mod pages;
pub mod svg;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    http::{header, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use minijinja::Environment;
use tokio_util::sync::CancellationToken;

use crate::client::Client;

/// Default listen address of `chorus dashboard` (loopback: it has no authentication).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9620";
/// Most dead letters read from the head of `chorus.dead` for the page.
const DEAD_LIMIT: usize = 100;
/// Most tasks listed on the tasks page.
const TASKS_LIMIT: usize = 200;

/// The embedded script of the task page (live updates only).
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// What every handler shares: the connections and the templates.
struct App {
    client: Client,
    templates: Environment<'static>,
    /// Ends the live streams on shutdown (the server waits for open connections).
    shutdown: CancellationToken,
}

type Shared = Arc<App>;

/// The templates, by name; `.html` names are auto-escaped by minijinja's default callback.
fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.add_template("base.html", include_str!("dashboard/templates/base.html"))?;
    env.add_template("tasks.html", include_str!("dashboard/templates/tasks.html"))?;
    env.add_template("task.html", include_str!("dashboard/templates/task.html"))?;
    env.add_template("dead.html", include_str!("dashboard/templates/dead.html"))?;
    env.add_template("error.html", include_str!("dashboard/templates/error.html"))?;
    Ok(env)
}

/// The dashboard's routes over `client` (connected to RabbitMQ and Redis); its live streams
/// end when `shutdown` is cancelled.
///
/// # Errors
/// A template does not compile (a bug of this crate; the unit tests compile them).
pub fn router(client: Client, shutdown: CancellationToken) -> Result<Router, minijinja::Error> {
    let app = Arc::new(App {
        client,
        templates: templates()?,
        shutdown,
    });
    Ok(Router::new()
        .route("/", get(|| async { Redirect::to("/tasks") }))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/events", get(live::events))
        .route("/dead", get(pages::dead))
        .route("/dead/requeue", post(pages::requeue))
        .route("/dashboard.js", get(script))
        .with_state(app))
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// Serves the dashboard on `listen` until `shutdown`. A non-loopback address is served as
/// asked, with a warning on standard error: anyone who reaches it can requeue dead letters.
///
/// # Errors
/// The address cannot be bound (taken, not local, no permission), as one line naming it; or a
/// template does not compile.
pub async fn serve(
    client: Client,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), String> {
    if !listen.ip().is_loopback() {
        eprintln!(
            "chorus dashboard: WARNING: listening on {listen}, not loopback: the dashboard has no \
             authentication (put it behind a reverse proxy with authentication or reach it \
             through an SSH tunnel; docs/operations.md#dashboard)"
        );
    }
    let router =
        router(client, shutdown.clone()).map_err(|e| format!("dashboard templates: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("chorus dashboard: serving http://{listen}/");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| format!("dashboard on {listen}: {e}"))
}

/// `name` rendered with `context`, or a 500 naming the template error.
fn render(app: &App, name: &str, context: minijinja::Value) -> Response {
    match app
        .templates
        .get_template(name)
        .and_then(|t| t.render(context))
    {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, template = name, "dashboard template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "template error").into_response()
        }
    }
}

/// An error page with `status` and `message` (escaped like everything else).
fn error_page(app: &App, status: StatusCode, message: &str) -> Response {
    let mut response = render(
        app,
        "error.html",
        minijinja::context! { title => "Error", message => message },
    );
    *response.status_mut() = status;
    response
}
