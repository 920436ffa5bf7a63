//! Progress of a task per worker type, from the `types` hash the scripts keep counting.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Store, TaskKeys};
use crate::error::StoreError;

/// Per worker type progress of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeProgress {
    /// Worker type.
    pub worker_type: String,
    /// Subtasks of this type in the plan.
    pub total: u64,
    /// Released to workers (queued, running or settled).
    pub released: u64,
    /// Settled as succeeded.
    pub succeeded: u64,
    /// Settled as failed.
    pub failed: u64,
    /// Settled as skipped.
    pub skipped: u64,
}

impl TypeProgress {
    /// Released and not settled yet: queued or running.
    pub fn in_flight(&self) -> u64 {
        self.released.saturating_sub(self.succeeded + self.failed)
    }

    /// Not released yet: waiting for dependencies or a slot.
    pub fn waiting(&self) -> u64 {
        self.total.saturating_sub(self.released + self.skipped)
    }

    /// Settled in any way.
    pub fn settled(&self) -> u64 {
        self.succeeded + self.failed + self.skipped
    }
}

/// Progress per worker type, sorted by type, from the `types` hash's fields: `<type>` holds the
/// total, `<type>:released`, `<type>:ok`, `<type>:failed` and `<type>:skipped` the counts.
/// Negative counts read as 0, unknown counters are ignored.
pub(super) fn progress_by_type(fields: HashMap<String, i64>) -> Vec<TypeProgress> {
    let mut by_type: BTreeMap<String, TypeProgress> = BTreeMap::new();
    for (field, value) in fields {
        let value = u64::try_from(value).unwrap_or(0);
        let (name, counter) = match field.split_once(':') {
            Some((name, counter)) => (name, counter),
            None => (field.as_str(), "total"),
        };
        let progress = by_type
            .entry(name.to_owned())
            .or_insert_with(|| TypeProgress {
                worker_type: name.to_owned(),
                ..TypeProgress::default()
            });
        match counter {
            "total" => progress.total = value,
            "released" => progress.released = value,
            "ok" => progress.succeeded = value,
            "failed" => progress.failed = value,
            "skipped" => progress.skipped = value,
            _ => {}
        }
    }
    by_type.into_values().collect()
}

impl Store {
    /// Progress per worker type, sorted by type.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn type_progress(&self, id: &str) -> Result<Vec<TypeProgress>, StoreError> {
        let keys = TaskKeys::new(id);
        let fields: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys.types())
            .query_async(&mut self.conn())
            .await?;
        Ok(progress_by_type(fields))
    }
}
