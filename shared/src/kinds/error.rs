//! [`KindError`]: how a kind's code fails, and whether another attempt may help.

use std::fmt;
use std::time::Duration;

/// An error from a kind's code, with whether another attempt may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl KindError {
    /// A failure another attempt may fix (a flaky API, a timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A retryable failure whose source asked to be called again no sooner than `after` (an
    /// HTTP `Retry-After`): the worker waits at least that long before the next attempt, up to
    /// its largest retry delay (`--retry-max-delay-ms`).
    pub fn retryable_after(message: impl Into<String>, after: Duration) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after: Some(after),
        }
    }

    /// A failure no retry will fix (invalid input, a bug).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The least wait before another attempt that the failure's source asked for, if any
    /// ([`KindError::retryable_after`]).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message, for humans.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KindError {}
