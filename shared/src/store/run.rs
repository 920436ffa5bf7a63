//! Runs of a task's steps (planning, synthesis, a subtask): counting them for poison detection
//! ([`Store::begin_run`], [`Store::end_run`]) and acquiring a lease for one together with what it
//! reads first ([`Store::lease_run`]).

use std::{collections::HashMap, sync::LazyLock, time::Duration};

use redis::{FromRedisValue, Script};

use super::{
    codec::decode_result,
    keys::Key,
    lease::{lease_ttl_ms, new_lease_token, Lease},
    record::{task_record, StoredResult, TaskRecord},
    Store, TaskKeys,
};
use crate::error::StoreError;

static LEASE_RUN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude/lease_run.lua"),
        include_str!("lua/lease_run.lua")
    ))
});
static BEGIN_RUN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/begin_run.lua")));
static END_RUN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/end_run.lua")));

/// Name under which planner runs are counted (see [`Store::begin_run`]).
pub const PLAN_RUN: &str = "plan";

/// A lease to acquire for a run, and how much to read with it.
pub struct LeaseRequest<'a> {
    /// The lease's key.
    pub key: &'a str,
    /// How long the lease lasts unless renewed (it is renewed while held).
    pub ttl: Duration,
    /// Name under which the run is counted (see [`Store::begin_run`]).
    pub run: &'a str,
    /// A settled task's results come with the lease when there are at most this many.
    pub results_up_to: usize,
}

/// A lease just acquired by [`Store::lease_run`] and what was read under it.
pub struct LeasedRun {
    /// The lease, held.
    pub lease: Lease,
    /// The task, if it exists.
    pub record: Option<TaskRecord>,
    /// Runs started and not ended, this one included; `None` when the task is finished or
    /// unknown (nothing left to run).
    pub runs: Option<u64>,
    /// Subtasks not settled yet.
    pub pending: u64,
    /// A small settled task's plan order and results, read with the lease.
    pub settled: Option<Settled>,
}

/// A settled task's plan order and every result, as synthesis reads them.
pub struct Settled {
    /// Subtask ids in plan order.
    pub order: Vec<String>,
    /// Every settled subtask.
    pub results: Vec<(String, StoredResult)>,
    /// The encoded plan entries of the first ids of `order`, in its order (`None` where one is
    /// missing), when they were read with the results (by the results that settle the task);
    /// empty otherwise. The dashboard's copy of the graph is built from them.
    pub plan: Vec<Option<Vec<u8>>>,
}

/// What the call that recorded a task's last results did with its synthesis lease.
pub enum SettledLease {
    /// Acquired, with what synthesis reads first.
    Acquired(Box<LeasedRun>),
    /// Held by another process, which is finishing the task.
    Held,
}

impl LeasedRun {
    /// Ends the run counted with the lease and releases the lease, for a run `run` of task
    /// `id` that stops before it starts. Failures are logged: the count then stays (as after a
    /// crash) and the lease lapses by itself.
    pub async fn release_unstarted(self, id: &str, run: &str) {
        if self.runs.is_some() {
            if let Err(error) = self.lease.store.end_run(id, run).await {
                tracing::debug!(task = id, %error, "cannot end the run released unstarted");
            }
        }
        self.lease.release_or_log(id).await;
    }
}

/// What `lease_run` (the Lua function) read besides the lease.
pub(super) struct LeasedRead {
    pub(super) runs: Option<u64>,
    pub(super) pending: u64,
    pub(super) record: Option<TaskRecord>,
    pub(super) settled: Option<Settled>,
}

/// Parses what `lua/prelude/lease_run.lua` returns for task `id`: `{runs, pending, task hash
/// fields}`, then for a small settled task `order, results fields` and perhaps the first plan
/// entries.
///
/// # Errors
/// The reply has another shape, or a stored value does not decode ([`StoreError::Corrupt`]).
pub(super) fn read_leased(id: &str, reply: &[redis::Value]) -> Result<LeasedRead, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("lease reply for {id}: {what}"));
    fn read<T: FromRedisValue>(value: Option<&redis::Value>) -> Result<T, String> {
        T::from_redis_value_ref(value.unwrap_or(&redis::Value::Nil)).map_err(|e| e.to_string())
    }
    let runs: i64 = read(reply.first()).map_err(corrupt)?;
    let pending: u64 = read(reply.get(1)).map_err(corrupt)?;
    let fields: HashMap<String, Vec<u8>> = read(reply.get(2)).map_err(corrupt)?;
    let record = task_record(id, &fields)?;
    let settled = match (reply.get(3), reply.get(4)) {
        (Some(order), Some(results)) => {
            let order: Vec<String> = read(Some(order)).map_err(corrupt)?;
            let results: Vec<(String, Vec<u8>)> = read(Some(results)).map_err(corrupt)?;
            let results = results
                .into_iter()
                .map(|(subtask, raw)| decode_result(id, subtask, &raw))
                .collect::<Result<Vec<_>, _>>()?;
            let plan = match reply.get(5) {
                Some(plan) => read(Some(plan)).map_err(corrupt)?,
                None => Vec::new(),
            };
            Some(Settled {
                order,
                results,
                plan,
            })
        }
        _ => None,
    };
    Ok(LeasedRead {
        runs: u64::try_from(runs).ok(),
        pending,
        record,
        settled,
    })
}

impl Store {
    /// Notes that a run of `what` (a subtask id, `plan` or `synth`) of task `task` starts.
    /// Returns the runs of it that started and have not finished, this one included — or
    /// `None` when the task is finished or unknown (nothing left to run).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn begin_run(&self, task: &str, what: &str) -> Result<Option<u64>, StoreError> {
        let keys = TaskKeys::new(task);
        // The task hash goes as an argument: a worker's Redis user may read it, not write it,
        // and the ACL takes every declared key of a script as written (begin_run.lua).
        let runs: i64 = BEGIN_RUN
            .key(keys.starts())
            .arg(what)
            .arg(keys.task())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(u64::try_from(runs).ok())
    }

    /// Notes that a run counted by [`Store::begin_run`] finished (whatever its result), so only
    /// runs that took their process down stay counted.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn end_run(&self, task: &str, what: &str) -> Result<(), StoreError> {
        let keys = TaskKeys::new(task);
        END_RUN
            .key(keys.starts())
            .arg(what)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Acquires the lease `request` names if nobody holds it and, in the same round trip, reads
    /// task `id` and its pending count and counts a run (as [`Store::begin_run`] does); for a
    /// settled task of at most `request.results_up_to` results, its plan order and results come
    /// too. `None` when the lease is held by someone else.
    ///
    /// # Errors
    /// Redis fails, or the task hash or a result is not one Chorus wrote.
    pub async fn lease_run(
        &self,
        id: &str,
        request: &LeaseRequest<'_>,
    ) -> Result<Option<LeasedRun>, StoreError> {
        let keys = TaskKeys::new(id);
        let token = new_lease_token();
        let reply: Option<Vec<redis::Value>> = LEASE_RUN
            .key(request.key)
            .key(keys.all(&[
                Key::Task,
                Key::Starts,
                Key::Pending,
                Key::Order,
                Key::Results,
            ]))
            .arg(&token)
            .arg(lease_ttl_ms(request.ttl))
            .arg(request.run)
            .arg(request.results_up_to)
            .invoke_async(&mut self.conn())
            .await?;
        match reply {
            Some(reply) => Ok(Some(self.leased(id, request, token, &reply).await?)),
            None => Ok(None),
        }
    }

    /// Holds the lease a script just acquired for `token` and reads what came with it (`reply`,
    /// what the Lua `lease_run` returns). A reply that cannot be read releases the lease and
    /// uncounts the run again.
    ///
    /// # Errors
    /// The reply is not one `lease_run` gives, or a stored value does not decode.
    pub(super) async fn leased(
        &self,
        id: &str,
        request: &LeaseRequest<'_>,
        token: String,
        reply: &[redis::Value],
    ) -> Result<LeasedRun, StoreError> {
        let lease = self.hold_lease(request.key, token, lease_ttl_ms(request.ttl));
        match read_leased(id, reply) {
            Ok(read) => Ok(LeasedRun {
                lease,
                record: read.record,
                runs: read.runs,
                pending: read.pending,
                settled: read.settled,
            }),
            Err(error) => {
                // A run counted beside a reply that cannot be read never started.
                if reply
                    .first()
                    .and_then(|runs| i64::from_redis_value_ref(runs).ok())
                    >= Some(0)
                {
                    drop(self.end_run(id, request.run).await);
                }
                lease.release_or_log(id).await;
                Err(error)
            }
        }
    }
}
