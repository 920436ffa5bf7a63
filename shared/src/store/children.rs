//! Child tasks a task's subtasks started, remembered so that cancelling the parent reaches them.

use super::{Store, TaskKeys};
use crate::error::StoreError;

impl Store {
    /// Remembers a child task started by a subtask, so cancelling the parent reaches it.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn add_child(&self, id: &str, child: &str) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        redis::cmd("SADD")
            .arg(keys.children())
            .arg(child)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Whether task `id` started `child` as a child task.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn is_child(&self, id: &str, child: &str) -> Result<bool, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("SISMEMBER")
            .arg(keys.children())
            .arg(child)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Child tasks started by the subtasks of a task.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn children(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("SMEMBERS")
            .arg(keys.children())
            .query_async(&mut self.conn())
            .await?)
    }
}
