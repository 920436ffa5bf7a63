//! A plan, review or synthesis that fails with a retryable error (a step's provider throttling,
//! a 5xx, a connection refused) is run again a few times before the task is given up on: a
//! handler's retries go through the broker's delay queues, but these run inside the
//! orchestrator's or synthesizer's handling of one message, so they wait in place.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{run_kind_code, KindError};

/// Runs of a plan, review or synthesis, the first included, while each fails retryably.
pub const KIND_CODE_ATTEMPTS: usize = 4;
/// Longest wait between two runs, a `Retry-After` included: the message being handled is held
/// meanwhile, so a provider asking for more is treated as down.
pub const MAX_KIND_CODE_WAIT: Duration = Duration::from_secs(30);

/// Runs `call` as [`run_kind_code`] does, and again while it returns a retryable
/// [`KindError`], up to [`KIND_CODE_ATTEMPTS`] runs: waiting its `retry_after`, else an
/// exponential backoff from 1 s (with jitter), never more than [`MAX_KIND_CODE_WAIT`]. The last
/// error's message says how many runs failed.
///
/// Used by the services, not by kind authors.
///
/// # Errors
/// `call` panicked: the panic's text (a panic is not retried).
pub async fn run_kind_code_retrying<T, F>(
    inline: bool,
    what: &str,
    call: F,
) -> Result<Result<T, KindError>, String>
where
    T: Send + 'static,
    F: Fn() -> Result<T, KindError> + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_KIND_CODE_WAIT)
        .with_jitter()
        .with_max_times(KIND_CODE_ATTEMPTS - 1)
        .build();
    let mut runs = 0;
    loop {
        runs += 1;
        let once = Arc::clone(&call);
        let error = match run_kind_code(inline, move || once()).await? {
            Ok(value) => return Ok(Ok(value)),
            Err(error) => error,
        };
        let next = backoff.next().filter(|_| error.is_retryable());
        let Some(delay) = next else {
            return Ok(Err(if runs > 1 {
                KindError::fatal(format!("{} (after {runs} runs)", error.message()))
            } else {
                error
            }));
        };
        let wait = error.retry_after().unwrap_or(delay).min(MAX_KIND_CODE_WAIT);
        tracing::info!(
            what,
            run = runs,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %error.message(),
            "retryable failure; running it again"
        );
        tokio::time::sleep(wait).await;
    }
}
