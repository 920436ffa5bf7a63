//! A task's outcome: storing it once (dropping the working state), reading it with everyone it
//! goes to, and noting its delivery.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{
    codec::{decode_outcome, decode_waiters},
    keys::{Key, WORKING},
    lease::Lease,
    results::add_usage_block,
    Store, TaskKeys,
};
use crate::{
    clock::now_ms,
    error::StoreError,
    protocol::{self, Outcome, ReplyTarget},
    usage::Usage,
};

static STORE_OUTCOME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/usage.lua"),
        include_str!("lua/store_outcome.lua")
    ))
});
static MARK_DELIVERED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/mark_delivered.lua")));

/// A finished task's outcome and everyone it goes to.
pub struct Finished {
    /// The stored outcome.
    pub outcome: Outcome,
    /// The submitters waiting for it.
    pub waiters: Vec<ReplyTarget>,
    /// The parent subtask of a child task, encoded [`protocol::ParentRef`].
    pub parent: Option<Vec<u8>>,
    /// Child tasks it started.
    pub children: Vec<String>,
    /// The task's kind (as submitted; empty when unknown).
    pub kind: String,
}

impl Store {
    /// Stores the outcome unless one is stored already, marks the task finished, sets the TTL on
    /// what is kept (`ttl`, whole seconds, at least 1) and drops the working state. Returns the
    /// outcome that is stored (the earlier one if there was one) with everyone it goes to.
    /// `usage` (what the steps that led to this outcome used: review, synthesis, a rejected
    /// plan) is counted on the task's record only when this outcome is the one stored, so a
    /// redone synthesis never counts twice; the caller includes it in `outcome.stats`. The
    /// dashboard's copy of the task's graph (`kept_graph`, JSON, when the caller built it from
    /// what it read already, `admin::graph::from_lease_read`) is written with the outcome; without
    /// it, it is read first ([`crate::admin::graph::prepare`]): one round trip more.
    ///
    /// # Errors
    /// Redis fails, or what is stored does not decode.
    pub async fn store_outcome(
        &self,
        outcome: &Outcome,
        usage: &[Usage],
        ttl: Duration,
        kept_graph: Option<Vec<u8>>,
    ) -> Result<Finished, StoreError> {
        let id = &outcome.id;
        // Read while the plan and results exist; a failure costs the page of a finished task
        // its graph, never the outcome.
        let graph = match kept_graph {
            Some(graph) => graph,
            None => crate::admin::graph::prepare(self, id)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(task = %crate::text::quoted(id), %error, "cannot keep the task's graph for the dashboard");
                    None
                })
                .unwrap_or_default(),
        };
        let keys = TaskKeys::new(id);
        let encoded = protocol::encode(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut call = STORE_OUTCOME.prepare_invoke();
        call.key(keys.all(&[
            Key::Task,
            Key::Outcome,
            Key::Waiters,
            Key::Types,
            Key::Children,
        ]))
        .key(crate::admin::graph::kept_key(id))
        .key(keys.all(&WORKING))
        .arg(&encoded)
        .arg(ttl.as_secs().max(1))
        .arg(now_ms())
        .arg(graph);
        add_usage_block(&mut call, usage);
        #[allow(clippy::type_complexity)]
        let (stored, parent, waiters, children, kind): (
            Vec<u8>,
            Vec<u8>,
            Vec<Vec<u8>>,
            Vec<String>,
            String,
        ) = call.invoke_async(&mut self.conn()).await?;
        if stored == encoded {
            // This outcome is the one stored: the index of recent tasks learns its end (a
            // task never claimed, e.g. a rejected plan's, enters it here). Written beside the
            // delivery rather than before it: the index only serves listings.
            let now = now_ms();
            self.index_task_in_background(id, &kind, outcome.status.as_str(), now, Some(now));
        }
        Ok(Finished {
            outcome: decode_outcome(&stored)?,
            waiters: decode_waiters(id, &waiters)?,
            parent: Some(parent).filter(|bytes| !bytes.is_empty()),
            children,
            kind,
        })
    }

    /// The stored outcome of a task with everyone it goes to; `None` without an outcome.
    ///
    /// # Errors
    /// Redis fails, or what is stored does not decode.
    pub async fn finished_task(&self, id: &str) -> Result<Option<Finished>, StoreError> {
        let (outcome, waiters, record, children) = tokio::try_join!(
            self.outcome(id),
            self.waiters(id),
            self.task(id),
            self.children(id)
        )?;
        let (parent, kind) =
            record.map_or((None, String::new()), |record| (record.parent, record.kind));
        Ok(outcome.map(|outcome| Finished {
            outcome,
            waiters,
            parent,
            children,
            kind,
        }))
    }

    /// The stored outcome of a task, if it has one.
    ///
    /// # Errors
    /// Redis fails, or the outcome does not decode.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        let keys = TaskKeys::new(id);
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(keys.outcome())
            .query_async(&mut self.conn())
            .await?;
        raw.map(|bytes| decode_outcome(&bytes)).transpose()
    }

    /// Which of `tasks` have an outcome (are over: finished, cancelled, past their deadline),
    /// in one round trip; one flag per task, in order.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn finished(&self, tasks: &[String]) -> Result<Vec<bool>, StoreError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for task in tasks {
            pipe.cmd("EXISTS").arg(TaskKeys::new(task).outcome());
        }
        Ok(pipe.query_async(&mut self.conn()).await?)
    }

    /// Marks each of `tasks` held by a worker for `ttl` (whole milliseconds): the worker refreshes
    /// the mark while it holds subtasks of the task (running or prefetched, unacked), and the
    /// sweeper takes none of a held task's subtasks for lost, since an unacked message is
    /// invisible in its queue (a passive declare counts ready messages only). One pipelined
    /// round trip, keys of any slots (one command each).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn hold(&self, tasks: &[String], ttl: Duration) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        for task in tasks {
            pipe.cmd("SET")
                .arg(TaskKeys::new(task).held())
                .arg(1)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        Ok(pipe.query_async(&mut self.conn()).await?)
    }

    /// Whether a worker holds subtasks of task `id` now (see [`Store::hold`]).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn is_held(&self, id: &str) -> Result<bool, StoreError> {
        Ok(redis::cmd("EXISTS")
            .arg(TaskKeys::new(id).held())
            .query_async(&mut self.conn())
            .await?)
    }

    /// Everyone waiting for the outcome of a task.
    ///
    /// # Errors
    /// Redis fails, or a waiter entry does not decode.
    pub async fn waiters(&self, id: &str) -> Result<Vec<ReplyTarget>, StoreError> {
        let keys = TaskKeys::new(id);
        let raw: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(keys.waiters())
            .query_async(&mut self.conn())
            .await?;
        decode_waiters(id, &raw)
    }

    /// Notes that every waiter has been sent the outcome, and releases the synthesis `lease`
    /// the delivery ran under, if any, in the same round trip ([`Lease::release`] is then a
    /// no-op).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_delivered(&self, id: &str, lease: Option<&Lease>) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        if let Some(lease) = lease {
            lease.stop_renewing();
        }
        MARK_DELIVERED
            .key(keys.task())
            .key(lease.map_or_else(|| keys.synth_lease(), |lease| lease.key.clone()))
            .arg(lease.map_or("", |lease| lease.token.as_str()))
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        if let Some(lease) = lease {
            lease.mark_released();
        }
        Ok(())
    }
}
