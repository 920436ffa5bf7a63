//! The one place a step's answer is checked, for every kind of step: at most the size limit,
//! valid JSON, and not a step-reported failure (`{"error": "...", "retryable": ...}`), whose
//! `usage` is recorded all the same: its calls were paid.

use serde::Deserialize;

use super::StepError;
use crate::usage::{Usage, UsageMeter};

/// Bytes of an unusable answer quoted in its error (escaped by [`crate::text::bounded`]).
pub const QUOTED_BYTES: usize = 200;

/// The fields of an answer that reports a failure instead of a result.
#[derive(Deserialize)]
struct Reported {
    error: String,
    #[serde(default)]
    retryable: bool,
    /// What the step's model calls used before it failed (docs/kinds.md#usage).
    #[serde(default)]
    usage: Vec<Usage>,
}

/// `bytes` as an answer: returned as they are when they are one JSON document of at most
/// `max_bytes`; `what` names the step in messages (`command "python3"`). The `usage` of a
/// `{"error": ...}` answer goes to `usage` (an answer's own `usage` is the caller's to read).
///
/// # Errors
/// [`StepError::Fatal`] for an oversized answer or one that is not JSON (its first bytes
/// quoted), and for `{"error": "..."}`; [`StepError::Retryable`] for
/// `{"error": "...", "retryable": true}` (the rule of docs/kinds.md#steps).
pub fn check(
    bytes: Vec<u8>,
    max_bytes: usize,
    what: &str,
    usage: &UsageMeter,
) -> Result<Vec<u8>, StepError> {
    inspect(bytes, max_bytes, what, usage).map_err(|rejected| rejected.error)
}

/// An answer [`check`] refused, and whether it was JSON at all (a pool process that answered
/// JSON, even an error report, is still in step with us and is kept).
#[derive(Debug)]
pub struct Rejected {
    /// The classified failure.
    pub error: StepError,
    /// Whether the answer was one well-formed JSON document within the limit.
    pub json: bool,
}

/// [`check`], telling a step-reported failure apart from an unusable answer.
///
/// # Errors
/// [`Rejected`], as [`check`] classifies it.
pub fn inspect(
    bytes: Vec<u8>,
    max_bytes: usize,
    what: &str,
    usage: &UsageMeter,
) -> Result<Vec<u8>, Rejected> {
    if bytes.len() > max_bytes {
        return Err(Rejected {
            error: oversized(what, max_bytes, &bytes),
            json: false,
        });
    }
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(error) => {
            return Err(Rejected {
                error: StepError::Fatal {
                    message: format!(
                        "{what} answered something that is not JSON ({error}): {}",
                        first_bytes(&bytes)
                    ),
                },
                json: false,
            })
        }
    };
    match value.as_object() {
        Some(object) if object.contains_key("error") => Err(Rejected {
            error: reported(value, what, usage),
            json: true,
        }),
        _ => Ok(bytes),
    }
}

/// The error of an answer longer than `max_bytes`, quoting `head`, its first bytes as far as
/// they were read (none when the answer was refused by its declared length).
pub fn oversized(what: &str, max_bytes: usize, head: &[u8]) -> StepError {
    let quoted = if head.is_empty() {
        String::new()
    } else {
        format!(": {}", first_bytes(head))
    };
    StepError::Fatal {
        message: format!("{what} answered more than the limit of {max_bytes} bytes{quoted}"),
    }
}

/// The first [`QUOTED_BYTES`] of `bytes`, lossy UTF-8, escaped, in quotes.
pub fn first_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(QUOTED_BYTES)];
    let more = if bytes.len() > QUOTED_BYTES {
        "…"
    } else {
        ""
    };
    format!(
        "\"{}{more}\"",
        crate::text::bounded(&String::from_utf8_lossy(head), QUOTED_BYTES * 2)
    )
}

/// The failure a `{"error": ...}` answer reports, its `usage` recorded in `meter`; an `error`
/// that is not a string, a `retryable` that is not a boolean or a `usage` out of its bounds is
/// the step's mistake and fatal.
fn reported(value: serde_json::Value, what: &str, meter: &UsageMeter) -> StepError {
    match Reported::deserialize(value) {
        Ok(Reported { usage, .. }) if crate::usage::validate_all(&usage).is_err() => {
            let problem = crate::usage::validate_all(&usage).err().unwrap_or_default();
            StepError::Fatal {
                message: format!("{what} answered an error report with a bad usage: {problem}"),
            }
        }
        Ok(Reported {
            error,
            retryable,
            usage,
        }) => {
            meter.record(usage);
            let message = format!("{what} reported: {}", crate::text::reason(&error));
            if retryable {
                StepError::Retryable {
                    message,
                    retry_after: None,
                }
            } else {
                StepError::Fatal { message }
            }
        }
        Err(error) => StepError::Fatal {
            message: format!("{what} answered a malformed error report: {error}"),
        },
    }
}
