//! The nodes of a RabbitMQ cluster: connecting to whichever answers, trying them in turn.
//!
//! A service is given the nodes' URLs (`--amqp-url a,b,c`). Any node serves any queue (a
//! quorum queue's leader may be elsewhere; the node forwards), so the first node that accepts
//! is as good as another. Each attempt is bounded by `--amqp-connect-timeout-ms`, so a host
//! that is down costs at most that much before the next node is tried.

use std::time::Duration;

use lapin::Connection;

use crate::{error::BrokerError, tls::Endpoint};

use super::connect;

/// A connection to one node of the list, and which one (its index in the list).
pub struct NodeConnection {
    /// The open connection.
    pub connection: Connection,
    /// Index of the node in the list given to [`connect_any`].
    pub node: usize,
}

/// The order in which `count` nodes are tried when starting at `start`: `start`, the next
/// ones, wrapping around, each once (`start` is taken modulo `count`).
pub fn attempt_order(start: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |offset| (start + offset) % count)
}

/// The nodes for a log line, passwords hidden, separated by commas.
pub fn redacted_nodes(nodes: &[Endpoint]) -> String {
    nodes
        .iter()
        .map(Endpoint::redacted)
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to the first node of `nodes` that accepts, trying them from index `start` on
/// (wrapping around, each once); each attempt is given `timeout`. The connection is named
/// `name` as in [`connect`]. With several nodes, each failed attempt is logged (one line, the
/// node's URL without its password) before the next is tried.
///
/// # Errors
/// No node accepted: [`BrokerError::TlsRefused`] or [`BrokerError::Settings`] when a node
/// failed that way (retrying would not help, and at start-up the service stops on it), else
/// the last node's error ([`BrokerError::Timeout`] for one that did not answer in time).
/// Also [`BrokerError::Settings`] for an empty list.
pub async fn connect_any(
    nodes: &[Endpoint],
    start: usize,
    name: &str,
    timeout: Duration,
) -> Result<NodeConnection, BrokerError> {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut lasting: Option<BrokerError> = None;
    let mut last: Option<BrokerError> = None;
    for node in attempt_order(start, nodes.len()) {
        let endpoint = &nodes[node];
        let error = match tokio::time::timeout(timeout, connect(endpoint, name)).await {
            Ok(Ok(connection)) => return Ok(NodeConnection { connection, node }),
            Ok(Err(error)) => error,
            Err(_) => BrokerError::Timeout("connecting to RabbitMQ", timeout_ms),
        };
        if nodes.len() > 1 {
            tracing::warn!(broker = %endpoint.redacted(), node = node + 1, nodes = nodes.len(), error = %error, "cannot connect to this RabbitMQ node; trying the next");
        }
        match error {
            BrokerError::TlsRefused(_) | BrokerError::Settings(_) => {
                lasting.get_or_insert(error);
            }
            other => last = Some(other),
        }
    }
    Err(lasting
        .or(last)
        .unwrap_or_else(|| BrokerError::Settings("--amqp-url: no URL".to_owned())))
}

#[cfg(test)]
mod tests;
