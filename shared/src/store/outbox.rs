//! The outbox: subtasks released after planning whose publication is not confirmed yet, kept
//! so that a crash between release and publish is repaired by publishing them again.

use std::sync::LazyLock;

use redis::Script;

use super::{graph::Released, Store, TaskKeys};
use crate::{error::StoreError, protocol::PlanEntry};

static CLEAR_OUTBOX: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/clear_outbox.lua")));

impl Store {
    /// Entries released after planning whose publication was not confirmed (a crash between
    /// release and publish): publishing them again is how the caller repairs it.
    ///
    /// # Errors
    /// Redis fails, or an entry does not decode.
    pub async fn outbox(&self, id: &str) -> Result<Released, StoreError> {
        let keys = TaskKeys::new(id);
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.outbox())
            .query_async(&mut self.conn())
            .await?;
        self.entries(id, &ids).await
    }

    /// Notes that the publication of `released` is confirmed.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn clear_outbox(&self, id: &str, released: &[PlanEntry]) -> Result<(), StoreError> {
        if released.is_empty() {
            return Ok(());
        }
        let keys = TaskKeys::new(id);
        let mut call = CLEAR_OUTBOX.prepare_invoke();
        call.key(keys.outbox());
        for entry in released {
            call.arg(&entry.id);
        }
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }
}
