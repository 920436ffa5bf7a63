//! HTTP steps against a real server (tests/fixtures/steps/http_server.py): headers, signing,
#![allow(clippy::unwrap_used)]
//! and every status class.

use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::*;
use crate::steps::http::parse_retry_after;

const SECRET: &str = "a shared secret";

/// Sets the variables the specs below name, once (before any step reads them).
fn secrets() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        std::env::set_var("CHORUS_STEPS_TEST_SECRET", SECRET);
        std::env::set_var("CHORUS_STEPS_TEST_WRONG_SECRET", "not the secret");
        std::env::set_var("CHORUS_STEPS_TEST_TOKEN", "Bearer t0ken");
    });
}

/// A running fixture server and its base URL; killed when dropped.
struct Server {
    _process: tokio::process::Child,
    base: String,
}

async fn server() -> Server {
    let mut process = tokio::process::Command::new("python3")
        .arg(fixtures().join("http_server.py"))
        .env("STEP_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let mut port = String::new();
    let mut lines = tokio::io::BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut port))
        .await
        .unwrap()
        .unwrap();
    Server {
        _process: process,
        base: format!("http://127.0.0.1:{}", port.trim()),
    }
}

fn http(url: String, extra: serde_json::Value) -> Step {
    secrets();
    let mut spec = json!({"type": "http", "url": url, "timeout_ms": 2000});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    step(spec)
}

#[tokio::test]
async fn posts_the_request_with_its_headers() {
    let server = server().await;
    let step = http(
        format!("{}/ok", server.base),
        json!({"headers": {"X-Team": "data"},
        "headers_from_env": {"Authorization": "CHORUS_STEPS_TEST_TOKEN"}}),
    );
    let answer = call(&step, json!({"step": "plan", "task": {"id": "t"}}))
        .await
        .unwrap();
    assert_eq!(answer["echo"]["task"]["id"], "t");
    let headers = &answer["headers"];
    assert_eq!(headers["x-team"], "data");
    assert_eq!(headers["authorization"], "Bearer t0ken");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-chorus-step"], "plan");
    assert!(headers["user-agent"]
        .as_str()
        .unwrap()
        .starts_with("chorus/"));
    assert!(headers.get("x-chorus-signature").is_none());
}

#[tokio::test]
async fn the_server_verifies_the_signature_and_refuses_a_wrong_one() {
    let server = server().await;
    let url = format!("{}/signed", server.base);
    let signed = http(
        url.clone(),
        json!({"signing_secret_env": "CHORUS_STEPS_TEST_SECRET"}),
    );
    assert_eq!(
        call(&signed, json!({"step": "handle"})).await.unwrap(),
        json!({"verified": true})
    );
    let wrong = http(
        url.clone(),
        json!({"signing_secret_env": "CHORUS_STEPS_TEST_WRONG_SECRET"}),
    );
    assert_fatal(
        call(&wrong, json!({"step": "handle"})).await,
        "401 Unauthorized: \"bad signature\"",
    );
    assert_fatal(call(&http(url, json!({})), json!({})).await, "401");
}

#[tokio::test]
async fn too_many_requests_is_retryable_after_what_the_server_asks() {
    let server = server().await;
    match call(&http(format!("{}/429", server.base), json!({})), json!({})).await {
        Err(StepError::Retryable {
            retry_after,
            message,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match call(
        &http(format!("{}/429-date", server.base), json!({})),
        json!({}),
    )
    .await
    {
        Err(StepError::Retryable {
            retry_after: Some(wait),
            ..
        }) => {
            assert!(
                wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
                "{wait:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_are_retryable_and_client_errors_fatal() {
    let server = server().await;
    let result = call(&http(format!("{}/500", server.base), json!({})), json!({})).await;
    assert_retryable(result, "500 Internal Server Error: \"internal trouble\"");
    let result = call(&http(format!("{}/400", server.base), json!({})), json!({})).await;
    assert_fatal(
        result,
        "400 Bad Request: \"bad request: field x is missing\"",
    );
}

#[tokio::test]
async fn unusable_answers_are_fatal() {
    let server = server().await;
    let result = call(
        &http(format!("{}/garbage", server.base), json!({})),
        json!({}),
    )
    .await;
    assert_fatal(result, "\"<html>not json</html>\"");
    let result = call(&http(format!("{}/big", server.base), json!({})), json!({})).await;
    assert_fatal(result, "more than the limit of 10000 bytes");
    // Without a Content-Length, reading stops at the limit instead of taking all 20 s.
    let started = std::time::Instant::now();
    let endless = http(
        format!("{}/endless", server.base),
        json!({"timeout_ms": 30000}),
    );
    assert_fatal(
        call(&endless, json!({})).await,
        "more than the limit of 10000 bytes",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // An error's long body is quoted by its first bytes.
    let result = call(
        &http(format!("{}/400-long", server.base), json!({})),
        json!({}),
    )
    .await;
    assert_fatal(
        result,
        "400 Bad Request: \"first words of a long refusal zzz",
    );
}

#[tokio::test]
async fn a_timeout_and_a_refused_connection_are_retryable() {
    let server = server().await;
    let result = call(&http(format!("{}/slow", server.base), json!({})), json!({})).await;
    assert_retryable(result, "timed out after 2000 ms");
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = call(
        &http(format!("http://127.0.0.1:{port}/ok"), json!({})),
        json!({}),
    )
    .await;
    assert_retryable(result, "request failed");
}

#[test]
fn retry_after_takes_seconds_or_a_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

#[test]
fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
    // Computed with Python's hmac module: hmac.new(b"Jefe", b'1700000000.{"step":"plan"}',
    // hashlib.sha256).hexdigest().
    let signature = crate::steps::http::signature(b"Jefe", "1700000000", br#"{"step":"plan"}"#);
    assert_eq!(
        signature,
        "sha256=9134d48fc37ef34f5b02cb3970d7bbc3be3e97705e7cf7ebd5143d70873ea11a"
    );
}
