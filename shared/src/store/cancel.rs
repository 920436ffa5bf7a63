//! Keeping a cancel that comes before its task is claimed: the synthesizer stores it under the
//! task's hash tag for the outcome TTL, and the claim applies it (`lua/prelude/claim.lua`), so a
//! task cancelled right after its submission ends `cancelled` without running anything.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{keys::Key, Store, TaskKeys};
use crate::error::StoreError;

static KEEP_CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/keep_cancel.lua")));

/// What became of a cancel given to [`Store::keep_cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeptCancel {
    /// The task is not claimed yet: the cancel is kept, and its claim will end it `cancelled`.
    Kept,
    /// The task exists (claimed, or finished): nothing was kept; stop it as a claimed task.
    Claimed,
}

impl Store {
    /// Keeps the cancel of task `id` (with the canceller's `reason`, if any) for `ttl` when the
    /// task is not claimed yet, atomically with the claim (which moves it into the task).
    ///
    /// # Errors
    /// Redis failed.
    pub async fn keep_cancel(
        &self,
        id: &str,
        reason: Option<&str>,
        ttl: Duration,
    ) -> Result<KeptCancel, StoreError> {
        let keys = TaskKeys::new(id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let kept: i64 = KEEP_CANCEL
            .key(keys.all(&[Key::Task, Key::Outcome, Key::Cancel]))
            .arg(reason.unwrap_or(""))
            .arg(ttl_ms)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(if kept == 1 {
            KeptCancel::Kept
        } else {
            KeptCancel::Claimed
        })
    }
}
