//! Strict decoding of what comes from outside Chorus: task requests, control messages and kinds'
//! inputs, in JSON and MessagePack alike.
//!
//! serde's derived `Deserialize` accepts a struct from a sequence of its fields in order (and a
//! field named by its index), so `"options": [1]` would mean `max_attempts: 1`. Here the target
//! is deserialized straight from the body's bytes through a strict wrapper of the format's own
//! deserializer (`de.rs`): structs, struct variants and maps only from maps with string keys,
//! every field the target does not know refused (serde asks to ignore those through
//! `deserialize_ignored_any`, refused here), nesting at most [`MAX_DEPTH`] deep, at most
//! [`MAX_VALUES`] array elements and map entries. No generic value is built on the way, so what
//! a body costs is what its target holds: a task request keeps its input as MessagePack bytes
//! ([`RawInput`]). `serde_path_to_error` names the field an error happened at
//! (`options.max_attempts`).
//!
//! What this cannot reach: serde buffers the fields of a `#[serde(flatten)]` struct and the
//! value of an untagged or internally tagged enum (its private `Content`), then deserializes the
//! target from that buffer with serde's own, lenient deserializer; there a struct may come from an
//! array again. A kind's input should not use those attributes (docs/kinds.md, docs/security.md);
//! Chorus's own public messages do not.
//!
//! Internal messages (subtasks, results, what Redis holds) are written by Chorus as maps and stay
//! on `rmp_serde` directly: their decode is on the hot path, and docs/protocol.md lets a newer
//! version add fields to them.

use std::{cell::Cell, fmt, io::Cursor};

use serde::de::DeserializeOwned;

mod de;
mod raw;

pub use raw::RawInput;

/// Deepest nesting of arrays and maps accepted in a decoded body: what the recursion limit of
/// `serde_json` (128) lets through, applied to MessagePack too, so that a depth bomb is an
/// error, not a stack overflow.
pub const MAX_DEPTH: usize = 127;

/// Most array elements and map entries, counted together at every depth, in one decoded body.
/// Each costs its target at least a few bytes however small it is on the wire (a `String` 24, a
/// generic value 40 or more), so this bounds what a body of one-byte elements can make a
/// decoder allocate; 2^20 leaves the default 8 MiB message room for any real input.
pub const MAX_VALUES: usize = 1 << 20;

/// A strict decode that failed: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictError {
    /// Dotted path of the field (`options.max_attempts`, `items[2].id`); empty at the root.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl StrictError {
    /// The error with its path under `root` (`input` gives `input.parts: ...`, and
    /// `input: ...` at the root).
    pub fn under(&self, root: &str) -> String {
        match (root.is_empty(), self.path.is_empty()) {
            (true, true) => self.message.clone(),
            (true, false) => format!("{}: {}", self.path, self.message),
            (false, true) => format!("{root}: {}", self.message),
            (false, false) if self.path.starts_with('[') => {
                format!("{root}{}: {}", self.path, self.message)
            }
            (false, false) => format!("{root}.{}: {}", self.path, self.message),
        }
    }
}

impl fmt::Display for StrictError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.under(""))
    }
}

impl std::error::Error for StrictError {}

/// Deserializes `T` from a MessagePack body by the strict rules of this module: one value,
/// nothing after it.
///
/// # Errors
/// Bytes that are not one MessagePack value (`not MessagePack: ...`, at the root), a struct
/// given as anything but a map, a field `T` does not know, a key that is not a string, a value of
/// the wrong type, a missing field, nesting deeper than [`MAX_DEPTH`], more than [`MAX_VALUES`]
/// elements: with the path of the field.
pub fn from_msgpack<T: DeserializeOwned>(body: &[u8]) -> Result<T, StrictError> {
    let mut reader = rmp_serde::Deserializer::new(Cursor::new(body));
    let values_left = Cell::new(MAX_VALUES);
    let strict = de::Strict::new(&mut reader, de::Scope::root(&values_left));
    let value = serde_path_to_error::deserialize(strict).map_err(|e| {
        let path = path_of(&e);
        match e.into_inner() {
            error @ (rmp_serde::decode::Error::InvalidMarkerRead(_)
            | rmp_serde::decode::Error::InvalidDataRead(_)
            | rmp_serde::decode::Error::TypeMismatch(_)
            | rmp_serde::decode::Error::DepthLimitExceeded) => {
                root_error(format!("not MessagePack: {error}"))
            }
            error => StrictError {
                path,
                message: error.to_string(),
            },
        }
    })?;
    let rest = u64::try_from(body.len())
        .unwrap_or(u64::MAX)
        .saturating_sub(reader.position());
    if rest > 0 {
        return Err(root_error(format!(
            "{rest} bytes follow the MessagePack value"
        )));
    }
    Ok(value)
}

/// Deserializes `T` from a JSON body by the strict rules of this module (`serde_json` itself
/// also limits nesting to [`MAX_DEPTH`]).
///
/// # Errors
/// Text that is not one JSON value (`not JSON: ...`, at the root), and as [`from_msgpack`].
pub fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, StrictError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    let values_left = Cell::new(MAX_VALUES);
    let strict = de::Strict::new(&mut reader, de::Scope::root(&values_left));
    let value = serde_path_to_error::deserialize(strict).map_err(|e| {
        let path = path_of(&e);
        json_error(path, e.into_inner())
    })?;
    reader
        .end()
        .map_err(|e| root_error(format!("not JSON: {e}")))?;
    Ok(value)
}

fn path_of<E>(error: &serde_path_to_error::Error<E>) -> String {
    let path = error.path().to_string();
    if path == "." {
        String::new()
    } else {
        path
    }
}

/// A JSON syntax error at the root; a data error at its field, without the line and column
/// `serde_json` adds (the path says where, and the same body in MessagePack reads the same).
fn json_error(path: String, error: serde_json::Error) -> StrictError {
    if !error.is_data() {
        return root_error(format!("not JSON: {error}"));
    }
    let position = format!(" at line {} column {}", error.line(), error.column());
    let text = error.to_string();
    let message = text.strip_suffix(&position).unwrap_or(&text).to_owned();
    StrictError { path, message }
}

fn root_error(message: String) -> StrictError {
    StrictError {
        path: String::new(),
        message,
    }
}

#[cfg(test)]
mod tests;
