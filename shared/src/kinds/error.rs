//! [`KindError`]: how a kind's code fails, and whether another attempt may help.

use std::fmt;

/// An error from a kind's code, with whether another attempt may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindError {
    message: String,
    retryable: bool,
}

impl KindError {
    /// A failure another attempt may fix (a flaky API, a timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix (invalid input, a bug).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
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
