//! Encoding and decoding of the values Chorus stores in Redis (MessagePack, as on the wire).

use crate::{
    error::StoreError,
    protocol::{self, Outcome, PlanEntry, ReplyTarget},
};

use super::record::StoredResult;

/// A plan entry as the `plan` hash stores it.
///
/// # Errors
/// The entry does not encode ([`StoreError::Corrupt`]).
pub(super) fn encode_entry(entry: &PlanEntry) -> Result<Vec<u8>, StoreError> {
    protocol::encode(entry).map_err(|e| StoreError::Corrupt(format!("plan entry: {e}")))
}

/// A plan entry of task `task` from the `plan` hash.
///
/// # Errors
/// `bytes` is not an encoded entry ([`StoreError::Corrupt`]).
pub(crate) fn decode_entry(task: &str, bytes: &[u8]) -> Result<PlanEntry, StoreError> {
    protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("plan entry of {task}: {e}")))
}

/// Subtask `subtask` of task `id` with its stored result decoded from `raw`.
///
/// # Errors
/// `raw` is not an encoded [`StoredResult`] ([`StoreError::Corrupt`]).
pub(super) fn decode_result(
    id: &str,
    subtask: String,
    raw: &[u8],
) -> Result<(String, StoredResult), StoreError> {
    let stored: StoredResult = protocol::decode(raw)
        .map_err(|e| StoreError::Corrupt(format!("result of {id}/{subtask}: {e}")))?;
    Ok((subtask, stored))
}

/// The members of task `id`'s `waiters` set.
///
/// # Errors
/// A member is not an encoded [`ReplyTarget`] ([`StoreError::Corrupt`]).
pub(super) fn decode_waiters(id: &str, raw: &[Vec<u8>]) -> Result<Vec<ReplyTarget>, StoreError> {
    raw.iter()
        .map(|bytes| {
            protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("waiter of {id}: {e}")))
        })
        .collect()
}

/// The value of an `outcome` key.
///
/// # Errors
/// `bytes` is not an encoded [`Outcome`] ([`StoreError::Corrupt`]).
pub(super) fn decode_outcome(bytes: &[u8]) -> Result<Outcome, StoreError> {
    protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored outcome: {e}")))
}
