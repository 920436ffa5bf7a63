//! An `http` step: the request `POST`ed as JSON to a URL, with fixed headers, headers whose
//! value comes from the environment, a time limit, TLS verified (system roots, or a private CA
//! instead), and an HMAC-SHA256 signature of `"<timestamp>.<body>"` so the endpoint can check
//! the call came from Chorus and refuse replays (the scheme of Stripe's and Slack's webhooks).

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::command::{config_error, millis};
use super::spec::{self, HttpSpec};
use super::{answer, StepConfigError, StepError};
use crate::usage::UsageMeter;

/// Header of the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-chorus-timestamp";
/// Header of the signature: `sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-chorus-signature";
/// Header naming the step called: `plan`, `handle`, `review` or `synthesize`.
pub const STEP_HEADER: &str = "x-chorus-step";

/// The steps a request's `"step"` may name (docs/kinds.md).
const STEP_NAMES: &[&str] = &["plan", "handle", "review", "synthesize"];

/// An HTTP step, checked and with its client built.
#[derive(Debug)]
pub struct HttpStep {
    client: Client,
    url: Url,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    what: String,
}

impl HttpStep {
    /// Checks `spec`, reads the environment variables it names and builds its client;
    /// `base_dir` resolves a relative `ca_file`.
    ///
    /// # Errors
    /// [`StepConfigError`] naming `url`, `headers.<name>`, `headers_from_env.<name>`,
    /// `signing_secret_env`, `timeout_ms` or `ca_file`.
    pub fn build(spec: &HttpSpec, base_dir: &Path) -> Result<HttpStep, StepConfigError> {
        let url =
            Url::parse(&spec.url).map_err(|e| config_error("url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(config_error(
                "url",
                "must be an http:// or https:// URL with a host",
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            insert_header(&mut headers, "headers", name, value, false)?;
        }
        for (name, variable) in &spec.headers_from_env {
            let key = format!("headers_from_env.{name}");
            let value = read_env(&key, variable)?;
            insert_header(&mut headers, "headers_from_env", name, &value, true)?;
        }
        let secret = match &spec.signing_secret_env {
            Some(variable) => Some(read_env("signing_secret_env", variable)?.into_bytes()),
            None => None,
        };
        let client = client(spec.ca_file.as_deref(), base_dir, "url")?;
        let mut shown = url.clone();
        let _ = shown.set_password(None);
        Ok(HttpStep {
            client,
            timeout: millis("timeout_ms", spec.timeout_ms, spec::DEFAULT_TIMEOUT_MS)?,
            what: format!("http {}", crate::text::quoted(shown.as_str())),
            url,
            headers,
            secret,
        })
    }

    /// `http <url>` (without a password), for `chorus kinds`.
    pub fn describe(&self) -> String {
        let mut shown = self.url.clone();
        let _ = shown.set_password(None);
        format!("http {shown}")
    }

    /// The step's own per-call limit.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads its answer (at most `max_answer_bytes`); the `usage` of an
    /// `{"error": ...}` answer goes to `usage`.
    ///
    /// # Errors
    /// [`StepError`]: connection errors, timeouts, 429 and 5xx are retryable (with the
    /// `Retry-After` asked for); other statuses are fatal with the body's first bytes quoted.
    pub async fn call(
        &self,
        request: &[u8],
        timeout: Duration,
        max_answer_bytes: usize,
        cancel: &CancellationToken,
        usage: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        let exchange = self.exchange(request, timeout, max_answer_bytes, usage);
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(StepError::Cancelled),
            result = exchange => result,
        }
    }

    async fn exchange(
        &self,
        request: &[u8],
        timeout: Duration,
        max_answer_bytes: usize,
        usage: &UsageMeter,
    ) -> Result<Vec<u8>, StepError> {
        let what = &self.what;
        let mut builder = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(timeout);
        if let Some(step) = step_of(request) {
            builder = builder.header(STEP_HEADER, step);
        }
        if let Some(secret) = &self.secret {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .to_string();
            builder = builder
                .header(SIGNATURE_HEADER, signature(secret, &timestamp, request))
                .header(TIMESTAMP_HEADER, timestamp);
        }
        let body = post(
            builder.body(request.to_vec()),
            what,
            timeout,
            max_answer_bytes,
        )
        .await?;
        answer::check(body, max_answer_bytes, what, usage)
    }
}

/// A client for calls of a step (HTTP or LLM): our user agent, no redirects (a redirect would
/// send the body somewhere the file does not name), and `ca_file` (relative to `base_dir`)
/// trusted INSTEAD of the system roots when given; `key` names the key blamed when the client
/// cannot be built.
///
/// # Errors
/// [`StepConfigError`] naming `ca_file` (unreadable, no certificate) or `key`.
pub(crate) fn client(
    ca_file: Option<&Path>,
    base_dir: &Path,
    key: &str,
) -> Result<Client, StepConfigError> {
    let mut builder = Client::builder()
        .user_agent(concat!("chorus/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca_file) = ca_file {
        let path = base_dir.join(ca_file);
        let pem = std::fs::read(&path)
            .map_err(|e| config_error("ca_file", format!("{}: {e}", path.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| config_error("ca_file", format!("{}: {e}", path.display())))?;
        if certificates.is_empty() {
            return Err(config_error("ca_file", "holds no certificate"));
        }
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| config_error(key, format!("the HTTP client cannot be built: {e}")))
}

/// Sends `request` (built, body included) and returns the body of a 2xx response (at most
/// `max_answer_bytes`, unchecked); `what` names the step in messages. The one classification
/// of HTTP failures every HTTP-speaking step shares (docs/kinds.md#steps).
///
/// # Errors
/// [`StepError::Retryable`] for connection errors, timeouts, 429 and 5xx (with the
/// `Retry-After` asked for); [`StepError::Fatal`] for other statuses (the body's first bytes
/// quoted) and an oversized body.
pub(crate) async fn post(
    request: reqwest::RequestBuilder,
    what: &str,
    timeout: Duration,
    max_answer_bytes: usize,
) -> Result<Vec<u8>, StepError> {
    send(request, what, timeout, max_answer_bytes)
        .await
        .map_err(|failure| failure.error)
}

/// A failed [`send`]: the error as [`post`] classifies it, and whether the server asked the
/// caller to slow down (429, or 503 with `Retry-After`: RFC 9110 §15.6.4), which `llm` steps
/// wait out inside the same attempt (docs/llm.md#limits).
#[derive(Debug)]
pub(crate) struct Failure {
    pub error: StepError,
    pub throttled: bool,
}

impl From<StepError> for Failure {
    fn from(error: StepError) -> Self {
        Self {
            error,
            throttled: false,
        }
    }
}

/// [`post`], telling a throttled call apart.
///
/// # Errors
/// As [`post`].
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
    timeout: Duration,
    max_answer_bytes: usize,
) -> Result<Vec<u8>, Failure> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(what, timeout, &e))?;
    let status = response.status();
    if status.is_success() {
        let declared = response.content_length().unwrap_or(0);
        if usize::try_from(declared).map_or(true, |declared| declared > max_answer_bytes) {
            return Err(answer::oversized(what, max_answer_bytes, &[]).into());
        }
        let (body, whole) = read_prefix(&mut response, max_answer_bytes)
            .await
            .map_err(|e| transport_error(what, timeout, &e))?;
        if !whole {
            return Err(answer::oversized(what, max_answer_bytes, &body).into());
        }
        return Ok(body);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    // Only the start of an error body is quoted; a read error leaves it out.
    let head = read_prefix(&mut response, answer::QUOTED_BYTES)
        .await
        .map(|(head, _)| head)
        .unwrap_or_default();
    let message = format!("{what} answered {status}: {}", answer::first_bytes(&head));
    let throttled = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some());
    let error = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        StepError::Retryable {
            message,
            retry_after,
        }
    } else {
        StepError::Fatal { message }
    };
    Err(Failure { error, throttled })
}

/// The body's first `max` bytes at most, and whether that is all of it (reading stops once
/// past `max`, so an endless body is not buffered).
async fn read_prefix(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// A connection error or timeout: retryable, with the cause chain (never the URL's password).
fn transport_error(what: &str, timeout: Duration, error: &reqwest::Error) -> StepError {
    let message = if error.is_timeout() {
        format!("{what} timed out after {} ms", timeout.as_millis())
    } else {
        let mut message = format!("{what}: {}", ErrorChain(error));
        message = crate::text::reason(&message);
        message
    };
    StepError::Retryable {
        message,
        retry_after: None,
    }
}

/// An error and its sources, `: `-separated, the URL left out.
struct ErrorChain<'a>(&'a reqwest::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request failed")?;
        let mut source = std::error::Error::source(self.0);
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `"<timestamp>.<body>"`).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length (RFC 2104), so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay seconds, or an HTTP-date (a date in the past
/// is no wait). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

/// The request's `"step"` when it names one of [`STEP_NAMES`].
fn step_of(request: &[u8]) -> Option<&'static str> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        step: Option<Cow<'a, str>>,
    }
    let head: Head<'_> = serde_json::from_slice(request).ok()?;
    let step = head.step?;
    STEP_NAMES.iter().copied().find(|name| *name == step)
}

/// Reads `variable` for `key`.
pub(crate) fn read_env(key: &str, variable: &str) -> Result<String, StepConfigError> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) => Err(config_error(
            key,
            format!("environment variable {variable} is empty"),
        )),
        Err(_) => Err(config_error(
            key,
            format!("environment variable {variable} is not set"),
        )),
    }
}

fn insert_header(
    headers: &mut HeaderMap,
    table: &str,
    name: &str,
    value: &str,
    secret: bool,
) -> Result<(), StepConfigError> {
    let key = format!("{table}.{name}");
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| config_error(&key, "not a valid header name"))?;
    let mut value =
        HeaderValue::from_str(value).map_err(|_| config_error(&key, "not a valid header value"))?;
    value.set_sensitive(secret);
    headers.insert(header, value);
    Ok(())
}
