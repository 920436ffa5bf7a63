//! What the spine tests (tests/tests/spine*.rs) share: publishing a request and waiting for its
//! outcome, the content types, the expected sums.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use lapin::{types::ShortString, BasicProperties};
use serde_json::Value;

pub use crate::fault::msgpack;
use crate::{msgpack_to_json, next_message, TestEnv};

/// Content type of a MessagePack request.
pub const MSGPACK: &str = "application/msgpack";

/// Content type of a JSON request.
pub const JSON: &str = "application/json";

/// Properties of a persistent request of `content_type` answered on `reply_to` under
/// `correlation_id`.
pub fn request_properties(
    content_type: &str,
    reply_to: &str,
    correlation_id: &str,
) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_delivery_mode(2)
        .with_reply_to(ShortString::from(reply_to))
        .with_correlation_id(ShortString::from(correlation_id))
}

/// Submits a MessagePack request with a private reply queue and returns the decoded outcome.
pub async fn run_task(env: &TestEnv, request: Value) -> Value {
    let client = env.client().await;
    client.wait_for_queue("chorus.tasks").await;
    let (reply_to, mut replies) = client.reply_queue().await;
    client
        .publish(
            "chorus.tasks",
            &msgpack(&request),
            request_properties(MSGPACK, &reply_to, "corr-1"),
        )
        .await;
    let reply = next_message(&mut replies).await;
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str),
        Some("corr-1")
    );
    msgpack_to_json(&reply.data)
}

/// The sum of the integers in `start..end`, what a `range-sum` task gives.
pub fn sum_of(start: i64, end: i64) -> i64 {
    (start..end).sum()
}
