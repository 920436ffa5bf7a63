//! MessagePack encoding and decoding of a kind's values, a failure becoming a fatal
//! [`KindError`] that says what did not encode or decode. A task's input came from its
//! submitter and decodes strictly ([`protocol::strict`]); subtasks and outputs were encoded by
//! the kind itself and decode as they were written.

use serde::{de::DeserializeOwned, Serialize};
use serde_bytes::ByteBuf;

use super::{KindError, Planned, Work};
use crate::protocol;

/// `value` as MessagePack bytes; `what` names it in the error (`"subtask"`, `"output"`).
pub(super) fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, KindError> {
    protocol::encode(value).map_err(|e| KindError::fatal(format!("cannot encode {what}: {e}")))
}

/// `value` as a MessagePack value, the way a kind's own type travels inside a wire message.
pub(super) fn encode_value<T: Serialize>(value: &T, what: &str) -> Result<rmpv::Value, KindError> {
    let bytes = encode(value, what)?;
    rmpv::decode::read_value(&mut bytes.as_slice())
        .map_err(|e| KindError::fatal(format!("{what} does not re-read: {e}")))
}

/// `bytes` decoded as `T`; the error reads `<invalid>: <cause>` (`"invalid input"`).
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], invalid: &str) -> Result<T, KindError> {
    protocol::decode(bytes).map_err(|e| KindError::fatal(format!("{invalid}: {e}")))
}

/// A task's `input` decoded as `T` by the strict rules of [`protocol::strict`]: structs only
/// from maps, no unknown fields. The error reads `invalid input: input.<field>: <cause>`.
pub(super) fn decode_input<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, KindError> {
    protocol::strict::from_msgpack(bytes)
        .map_err(|e| KindError::fatal(format!("invalid input: {}", e.under("input"))))
}

/// Encoded `(id, output)` pairs decoded as `T`, in their order; `whose` names the ids in the
/// error (`"subtask"`, `"dependency"`).
pub(super) fn decode_outputs<'a, T: DeserializeOwned>(
    outputs: impl Iterator<Item = (&'a String, &'a [u8])>,
    whose: &str,
) -> Result<Vec<(String, T)>, KindError> {
    outputs
        .map(|(id, bytes)| {
            protocol::decode(bytes)
                .map(|output| (id.clone(), output))
                .map_err(|e| {
                    KindError::fatal(format!("output of {whose} {id} does not decode: {e}"))
                })
        })
        .collect()
}

/// `planned` with its handler subtask encoded (a child task stays as it is).
pub(super) fn encode_planned<S: Serialize>(
    planned: Planned<S>,
    what: &str,
) -> Result<Planned<ByteBuf>, KindError> {
    let work = match planned.work {
        Work::Handler(subtask) => Work::Handler(ByteBuf::from(encode(&subtask, what)?)),
        Work::Child(spec) => Work::Child(spec),
    };
    Ok(Planned {
        id: planned.id,
        worker_type: planned.worker_type,
        depends_on: planned.depends_on,
        work,
    })
}
