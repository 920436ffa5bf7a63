//! Plain reads of a task's state — its hash, plan, order, results — with single commands, no
//! script.

use std::collections::HashMap;

use super::{
    codec::{decode_entry, decode_result},
    record::{task_record, StoredResult, TaskRecord},
    Store, TaskKeys, CHUNK,
};
use crate::{
    error::StoreError,
    protocol::{self, PlanEntry, SubtaskOutcome},
};

impl Store {
    /// Reads the task hash; `None` when the task is unknown (or expired).
    ///
    /// # Errors
    /// Redis fails, or the hash is not one Chorus wrote.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let keys = TaskKeys::new(id);
        let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(keys.task())
            .query_async(&mut self.conn())
            .await?;
        task_record(id, &fields)
    }

    /// Prompt plus completion tokens recorded so far for task `id` (its hash's `tokens`), 0
    /// for none or an unknown task: what the worker checks `max_tokens` against.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn tokens_used(&self, id: &str) -> Result<u64, StoreError> {
        let keys = TaskKeys::new(id);
        let used: Option<u64> = redis::cmd("HGET")
            .arg(keys.task())
            .arg("tokens")
            .query_async(&mut self.conn())
            .await?;
        Ok(used.unwrap_or(0))
    }

    /// Unsettled subtasks of a task.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn pending_count(&self, id: &str) -> Result<u64, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("SCARD")
            .arg(keys.pending())
            .query_async(&mut self.conn())
            .await?)
    }

    /// Reads every settled subtask, streaming the hash in chunks of about [`CHUNK`].
    ///
    /// # Errors
    /// Redis fails, or a stored result does not decode.
    pub async fn results(&self, id: &str) -> Result<Vec<(String, StoredResult)>, StoreError> {
        let keys = TaskKeys::new(id);
        let mut conn = self.conn();
        let mut cursor: u64 = 0;
        let mut results = Vec::new();
        loop {
            let (next, entries): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(keys.results())
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await?;
            for (subtask, raw) in entries {
                results.push(decode_result(id, subtask, &raw)?);
            }
            if next == 0 {
                return Ok(results);
            }
            cursor = next;
        }
    }

    /// Encoded outputs of `subtasks` of `task` (those that succeeded), for a handler's
    /// dependencies.
    ///
    /// # Errors
    /// Redis fails, a result does not decode, or a dependency has no successful output.
    pub async fn outputs(
        &self,
        task: &str,
        subtasks: &[String],
    ) -> Result<Vec<(String, serde_bytes::ByteBuf)>, StoreError> {
        if subtasks.is_empty() {
            return Ok(Vec::new());
        }
        let keys = TaskKeys::new(task);
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(keys.results())
            .arg(subtasks)
            .query_async(&mut self.conn())
            .await?;
        raw.into_iter()
            .zip(subtasks)
            .map(|(bytes, subtask)| {
                let bytes = bytes.ok_or_else(|| {
                    StoreError::Corrupt(format!("{task}/{subtask} has no result yet"))
                })?;
                let (subtask, stored) = decode_result(task, subtask.clone(), &bytes)?;
                match stored.outcome {
                    SubtaskOutcome::Succeeded(output) => Ok((subtask, output)),
                    _ => Err(StoreError::Corrupt(format!(
                        "{task}/{subtask} did not succeed"
                    ))),
                }
            })
            .collect()
    }

    /// Subtask ids in plan order.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn order(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("LRANGE")
            .arg(keys.order())
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await?)
    }

    /// First-wave entries `start..end` (positions in the wave), for resuming publication; the
    /// wave is read from the plan order when `wave_is_order`.
    ///
    /// # Errors
    /// Redis fails, or an entry is missing or does not decode.
    pub async fn wave_range(
        &self,
        id: &str,
        wave_is_order: bool,
        start: u64,
        end: u64,
    ) -> Result<Vec<PlanEntry>, StoreError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let keys = TaskKeys::new(id);
        let list = if wave_is_order {
            &keys.order()
        } else {
            &keys.wave()
        };
        let ids: Vec<String> = redis::cmd("LRANGE")
            .arg(list)
            .arg(start)
            .arg(end - 1)
            .query_async(&mut self.conn())
            .await?;
        self.entries(id, &ids).await
    }

    /// Plan entries of `ids`, in that order.
    ///
    /// # Errors
    /// Redis fails, or an entry is missing or does not decode.
    pub async fn entries(&self, id: &str, ids: &[String]) -> Result<Vec<PlanEntry>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = TaskKeys::new(id);
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(keys.plan())
            .arg(ids)
            .query_async(&mut self.conn())
            .await?;
        raw.iter()
            .zip(ids)
            .map(|(bytes, subtask)| match bytes {
                Some(bytes) => decode_entry(id, bytes),
                None => Err(StoreError::Corrupt(format!(
                    "task {id} has no plan entry {subtask}"
                ))),
            })
            .collect()
    }

    /// Worker types of `subtasks`, in that order (`default` for those stored without one).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn worker_types_of(
        &self,
        id: &str,
        subtasks: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if subtasks.is_empty() {
            return Ok(Vec::new());
        }
        let keys = TaskKeys::new(id);
        let types: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys.worker_types())
            .arg(subtasks)
            .query_async(&mut self.conn())
            .await?;
        Ok(types
            .into_iter()
            .map(|t| t.unwrap_or_else(|| protocol::DEFAULT_WORKER_TYPE.to_owned()))
            .collect())
    }
}
