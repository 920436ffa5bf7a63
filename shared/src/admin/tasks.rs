//! The index of recent tasks in Redis, bounded by age and count, and what `chorus tasks` (and the
//! dashboard) list from it.
//!
//! Two keys sharing the hash tag `{tasks}` (one Redis Cluster slot): `chorus:index:{tasks}`, a
//! sorted set of task ids scored by submit time (ms since the Unix epoch), and
//! `chorus:index:{tasks}:entries`, a hash of task id → JSON `{kind, status, submitted_ms,
//! finished_ms}`. A task's own keys live in its own slot (`chorus:{<id>}:*`), so the index
//! cannot be written by the claim's or the outcome's script on a Cluster: `index.lua` runs right
//! after them (one more round trip per claim and per outcome) and trims the index on every
//! write, so no sweeper is needed. The index is advisory: a failed write is logged and the task
//! goes on.

use std::{sync::LazyLock, time::Duration};

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::{clock::now_ms, error::StoreError, store::Store};

#[cfg(test)]
mod tests;

/// The sorted set of recent task ids, scored by submit time in ms.
pub const INDEX_KEY: &str = "chorus:index:{tasks}";
/// The hash of recent task id → JSON entry.
pub const ENTRIES_KEY: &str = "chorus:index:{tasks}:entries";
/// Longest a task stays in the index after its submission: 7 days.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most tasks the index holds; the oldest go first past it.
pub const MAX_COUNT: u64 = 10_000;
/// The `status` of an entry whose task has no outcome yet.
pub const LIVE: &str = "live";
/// Index entries read per round trip while filtering.
const PAGE: isize = 200;

static INDEX: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("tasks/index.lua")));

/// One task as the index keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Kind name.
    #[serde(default)]
    pub kind: String,
    /// [`LIVE`] or the outcome's status (`succeeded`, `failed`, ...).
    #[serde(default)]
    pub status: String,
    /// Submit (claim) time, ms since the Unix epoch.
    #[serde(default)]
    pub submitted_ms: u64,
    /// Time the outcome was stored, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// One line of `chorus tasks`.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSummary {
    /// Task id.
    pub id: String,
    /// Kind name.
    pub kind: String,
    /// The task's state while it runs (`planning`, `planned`, `running`), its outcome's status
    /// once finished; `live` when the task's record has expired before its outcome.
    pub status: String,
    /// Submit (claim) time, ms since the Unix epoch.
    pub submitted_ms: u64,
    /// Time the outcome was stored, ms since the Unix epoch.
    pub finished_ms: Option<u64>,
    /// Subtasks settled (succeeded + failed + skipped), while the task's record is kept.
    pub settled: Option<u64>,
    /// Subtasks in the plan, while the task's record is kept.
    pub subtasks: Option<u64>,
}

/// Which tasks to list: every field is optional, `limit` is at least 1.
#[derive(Clone, Debug)]
pub struct Filter {
    /// `running` (any task without an outcome), `planning`, `planned`, or an outcome's status.
    pub status: Option<String>,
    /// Kind name.
    pub kind: Option<String>,
    /// Most tasks listed, newest first.
    pub limit: usize,
}

impl Store {
    /// Writes task `id`'s entry in the index (`status`: [`LIVE`] at the claim, the outcome's
    /// status at the end; `kind` may be empty at the end) and trims the index to [`MAX_AGE`]
    /// and [`MAX_COUNT`]. Returns how many old entries the trim dropped.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn index_task(
        &self,
        id: &str,
        kind: &str,
        status: &str,
        submitted_ms: u64,
        finished_ms: Option<u64>,
    ) -> Result<u64, StoreError> {
        let entry = Entry {
            kind: kind.to_owned(),
            status: status.to_owned(),
            submitted_ms,
            finished_ms,
        };
        self.index_task_bounded(id, &entry, MAX_AGE, MAX_COUNT)
            .await
    }

    /// [`Store::index_task`] of `entry` with other bounds (`max_age`, `max_count`): for tests,
    /// and tools that trim harder.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn index_task_bounded(
        &self,
        id: &str,
        entry: &Entry,
        max_age: Duration,
        max_count: u64,
    ) -> Result<u64, StoreError> {
        let mut call = INDEX.prepare_invoke();
        call.key(INDEX_KEY)
            .key(ENTRIES_KEY)
            .arg(id)
            .arg(&entry.kind)
            .arg(&entry.status)
            .arg(entry.submitted_ms)
            .arg(
                entry
                    .finished_ms
                    .map(|ms| ms.to_string())
                    .unwrap_or_default(),
            )
            .arg(now_ms())
            .arg(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX))
            .arg(max_count);
        Ok(call.invoke_async(&mut self.conn()).await?)
    }

    /// [`Store::index_task`], with a failure logged instead of returned: the index only serves
    /// listings, and a task must not stop for it.
    pub async fn index_task_logged(
        &self,
        id: &str,
        kind: &str,
        status: &str,
        submitted_ms: u64,
        finished_ms: Option<u64>,
    ) {
        if let Err(error) = self
            .index_task(id, kind, status, submitted_ms, finished_ms)
            .await
        {
            tracing::warn!(task = %crate::text::quoted(id), %error, "cannot write the task in the index of recent tasks; it goes on");
        }
    }

    /// [`Store::index_task_logged`] on a task of its own: the claim and the outcome do not wait
    /// for the index (one Redis round trip less on each task's way), which only serves listings.
    /// Writes may land in either order: `index.lua` keeps the earliest submit time and never
    /// lets a `live` write hide an outcome. Must be called inside a Tokio runtime.
    pub fn index_task_in_background(
        &self,
        id: &str,
        kind: &str,
        status: &str,
        submitted_ms: u64,
        finished_ms: Option<u64>,
    ) {
        let store = self.clone();
        let (id, kind, status) = (id.to_owned(), kind.to_owned(), status.to_owned());
        tokio::spawn(async move {
            store
                .index_task_logged(&id, &kind, &status, submitted_ms, finished_ms)
                .await;
        });
    }
}

/// Whether `summary` passes `filter`'s status: `running` takes every task without an outcome.
fn matches(filter: &Filter, summary: &TaskSummary) -> bool {
    match filter.status.as_deref() {
        None => true,
        Some("running") => summary.finished_ms.is_none(),
        Some(wanted) => wanted == summary.status,
    }
}

/// The tasks of the index that pass `filter`, newest first, at most `filter.limit`, with their
/// progress while their record is kept.
///
/// # Errors
/// Redis fails.
pub async fn list(store: &Store, filter: &Filter) -> Result<Vec<TaskSummary>, StoreError> {
    let mut found = Vec::new();
    let mut start: isize = 0;
    while found.len() < filter.limit {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(INDEX_KEY)
            .arg(start)
            .arg(start + PAGE - 1)
            .arg("REV")
            .query_async(&mut store.conn())
            .await?;
        if ids.is_empty() {
            break;
        }
        start += PAGE;
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(ENTRIES_KEY)
            .arg(&ids)
            .query_async(&mut store.conn())
            .await?;
        for (id, raw) in ids.into_iter().zip(raw) {
            let entry: Entry = raw
                .and_then(|text| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            if filter.kind.as_deref().is_some_and(|k| k != entry.kind) {
                continue;
            }
            let summary = summarize(store, id, entry).await?;
            if matches(filter, &summary) {
                found.push(summary);
                if found.len() == filter.limit {
                    break;
                }
            }
        }
    }
    Ok(found)
}

/// `entry` of task `id` with the state and progress its record holds while kept.
async fn summarize(store: &Store, id: String, entry: Entry) -> Result<TaskSummary, StoreError> {
    let record = store.task(&id).await?;
    let status = match (&record, entry.status.as_str()) {
        (Some(record), LIVE) => record.state.as_str().to_owned(),
        _ => entry.status.clone(),
    };
    Ok(TaskSummary {
        kind: entry.kind,
        status,
        submitted_ms: entry.submitted_ms,
        finished_ms: entry.finished_ms,
        settled: record.as_ref().map(|r| r.succeeded + r.failed + r.skipped),
        subtasks: record.as_ref().map(|r| r.total),
        id,
    })
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time to the second (`2026-11-30T11:47:03Z`), or
/// the number itself should it be out of range.
pub fn rfc3339(ms: u64) -> String {
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
