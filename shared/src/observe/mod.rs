//! What an operator or a supervisor asks a running service (issue 19): the HTTP listener of
//! `--http-listen` with `/healthz` (the process runs), `/readyz` (connected and consuming,
//! [`health`]) and `/metrics` (Prometheus text, [`metrics`]).

pub mod health;
pub mod metrics;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use axum::{http::StatusCode, response::IntoResponse, routing::get, Router};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// Default listen address of the orchestrator (loopback: the endpoints are for this host's
/// supervisor and scraper unless the operator opens them).
pub const ORCHESTRATOR_LISTEN: &str = "127.0.0.1:9610";
/// Default listen address of the worker.
pub const WORKER_LISTEN: &str = "127.0.0.1:9611";
/// Default listen address of the synthesizer.
pub const SYNTHESIZER_LISTEN: &str = "127.0.0.1:9612";

/// `--http-listen`: where the service serves `/healthz`, `/readyz` and `/metrics`.
#[derive(Args, Clone, Debug, Default)]
pub struct HttpArgs {
    /// Address of the health and metrics listener (/healthz, /readyz, /metrics), IP:PORT, or
    /// "off". [default: 127.0.0.1:9610 orchestrator, 9611 worker, 9612 synthesizer; when the
    /// default port is taken the service runs without the listener]
    #[arg(long, env = "CHORUS_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// What `--http-listen` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// No listener (`off`).
    Off,
    /// The service's default address: a busy port is a warning, not an error.
    Default(SocketAddr),
    /// An address the operator gave: a busy one stops the service.
    Explicit(SocketAddr),
}

impl HttpArgs {
    /// The listener asked for, `default` (one of the `*_LISTEN` constants) when none is given.
    ///
    /// # Errors
    /// The address is neither `off` nor `IP:PORT`, as one line.
    pub fn listen(&self, default: &str) -> Result<Listen, String> {
        match self.http_listen.as_deref().map(str::trim) {
            Some("off") => Ok(Listen::Off),
            Some(given) => given.parse().map(Listen::Explicit).map_err(|_| {
                format!("--http-listen: {given:?} is not IP:PORT (e.g. 127.0.0.1:9611) or \"off\"")
            }),
            None => default
                .parse()
                .map(Listen::Default)
                .map_err(|_| format!("--http-listen: bad default {default:?}")),
        }
    }
}

/// The listener could not be started on an explicit address (the service stops, exit 64).
#[derive(Debug, thiserror::Error)]
#[error("--http-listen {address}: {reason}")]
pub struct ListenError {
    /// The address asked for.
    pub address: String,
    /// Why it cannot be used (the system's error).
    pub reason: String,
}

/// [`start`] with the listener `args` ask for (`default` when none): the one line of a
/// service's `run`.
///
/// # Errors
/// As [`start`], and an address that does not parse (the service's `validate` catches it first).
pub fn serve(
    args: &HttpArgs,
    default: &str,
    shutdown: CancellationToken,
) -> Result<(), ListenError> {
    let listen = args.listen(default).map_err(|reason| ListenError {
        address: args.http_listen.clone().unwrap_or_default(),
        reason,
    })?;
    start(listen, shutdown)
}

/// Binds `listen` now and serves the endpoints on the current runtime until `shutdown`.
/// A busy default address logs one warning and the service runs without the listener.
///
/// # Errors
/// [`ListenError`]: an explicit address cannot be bound (taken, not local, no permission).
pub fn start(listen: Listen, shutdown: CancellationToken) -> Result<(), ListenError> {
    let (address, explicit) = match listen {
        Listen::Off => {
            tracing::info!("--http-listen off: no health or metrics endpoints");
            return Ok(());
        }
        Listen::Default(address) => (address, false),
        Listen::Explicit(address) => (address, true),
    };
    metrics::install();
    // std's bind, so a busy port is known before the service connects anywhere.
    let bound = std::net::TcpListener::bind(address)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .and_then(tokio::net::TcpListener::from_std);
    let listener = match bound {
        Ok(listener) => listener,
        Err(error) if explicit => {
            return Err(ListenError {
                address: address.to_string(),
                reason: error.to_string(),
            })
        }
        Err(error) => {
            tracing::warn!(%address, %error, "default --http-listen address unavailable; running without health and metrics endpoints (give another with --http-listen)");
            return Ok(());
        }
    };
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "health and metrics listener stopped");
        }
    });
    Ok(())
}

/// The routes of the listener.
fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
}

async fn readyz() -> impl IntoResponse {
    match health::check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(),
    )
}
