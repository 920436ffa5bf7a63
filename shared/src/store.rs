//! Redis state of every task: key layout, the atomic Lua scripts of the fan-in, and leases.
//!
//! All keys of one task share the hash tag `{<task-id>}` (`chorus:{<id>}:task`, `...:plan`,
//! ...), so every script touches a single slot, as Redis Cluster requires (the connection itself
//! is to a single Redis for now).
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `task` | hash | state, kind, options, input, counters (duplicates included), timestamps |
//! | `waiters` | set | encoded [`ReplyTarget`]s that get the outcome |
//! | `plan` | list | subtask payloads in plan order (index = subtask id) |
//! | `pending` | set | ids of subtasks not settled yet |
//! | `results` | hash | subtask id → encoded [`SubtaskOutcome`] with attempts |
//! | `starts` | hash | subtask id, `plan` or `synth` → runs started and not finished (poison detection) |
//! | `outcome` | string | the encoded [`Outcome`], kept for the outcome TTL |
//! | `plan-lease`, `synth-lease` | string | owner token of the process planning / synthesizing |

use std::{sync::LazyLock, time::Duration};

use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Script};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    error::StoreError,
    protocol::{self, Outcome, ReplyTarget, SubtaskOutcome},
};

/// Lifecycle of a task in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Claimed; the plan is not (completely) recorded yet.
    Planning,
    /// Plan and pending set recorded; subtasks are being published.
    Planned,
    /// Every subtask has been published and confirmed.
    Running,
    /// The outcome is stored.
    Finished,
}

impl TaskState {
    fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "planning" => Ok(Self::Planning),
            "planned" => Ok(Self::Planned),
            "running" => Ok(Self::Running),
            "finished" => Ok(Self::Finished),
            other => Err(StoreError::Corrupt(format!("unknown task state {other:?}"))),
        }
    }

    /// Name as stored and shown by `chorus status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planning => "planning",
            Self::Planned => "planned",
            Self::Running => "running",
            Self::Finished => "finished",
        }
    }
}

/// The keys of one task.
#[derive(Clone, Debug)]
pub struct TaskKeys {
    /// Task hash.
    pub task: String,
    /// Set of reply targets.
    pub waiters: String,
    /// List of subtask payloads.
    pub plan: String,
    /// Set of unsettled subtask ids.
    pub pending: String,
    /// Hash of settled subtasks.
    pub results: String,
    /// The outcome.
    pub outcome: String,
    /// Hash of subtask id → runs started after a redelivery (poison detection).
    pub starts: String,
    /// Lease of the orchestrator planning and publishing the task.
    pub plan_lease: String,
    /// Lease of the synthesizer finishing the task.
    pub synth_lease: String,
}

impl TaskKeys {
    /// Keys of task `id`.
    pub fn new(id: &str) -> Self {
        let key = |suffix: &str| format!("chorus:{{{id}}}:{suffix}");
        Self {
            task: key("task"),
            waiters: key("waiters"),
            plan: key("plan"),
            pending: key("pending"),
            results: key("results"),
            outcome: key("outcome"),
            starts: key("starts"),
            plan_lease: key("plan-lease"),
            synth_lease: key("synth-lease"),
        }
    }
}

/// A settled subtask as stored in the `results` hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Attempts used.
    pub attempts: u32,
    /// Output or error.
    pub outcome: SubtaskOutcome,
}

/// What the claim of a task id found.
#[derive(Debug)]
pub enum Claim {
    /// The task already has an outcome (a duplicate submission after the end).
    Finished(Outcome),
    /// The id was new: the caller plans the task.
    New,
    /// The task exists and is in this state (a duplicate, or a redelivery after a crash).
    Exists(TaskState),
}

/// What recording a result did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// First time for this subtask; `remaining` are still pending.
    New {
        /// Unsettled subtasks left.
        remaining: u64,
    },
    /// Already recorded before; nothing changed.
    Duplicate {
        /// Unsettled subtasks left.
        remaining: u64,
    },
    /// The task is already finished; nothing changed.
    TaskFinished,
    /// No such task in Redis.
    UnknownTask,
    /// The task has no such subtask.
    UnknownSubtask,
}

/// Everything stored about a task, for `chorus status` and for synthesis.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    /// Lifecycle state.
    pub state: TaskState,
    /// Kind name.
    pub kind: String,
    /// Encoded [`protocol::ResolvedOptions`].
    pub options: Vec<u8>,
    /// Encoded task input.
    pub input: Vec<u8>,
    /// Subtasks in the plan (0 until planned).
    pub total: u64,
    /// Subtasks published and confirmed so far.
    pub published: u64,
    /// Settled as succeeded.
    pub succeeded: u64,
    /// Settled as failed.
    pub failed: u64,
    /// Retries summed over settled subtasks.
    pub retries: u64,
    /// Results that arrived again for an already settled subtask (duplicate executions or
    /// redeliveries), counted while the task record exists.
    pub duplicates: u64,
    /// When the orchestrator claimed the task, ms since the Unix epoch.
    pub created_ms: u64,
    /// Whether the outcome has been published to every waiter.
    pub delivered: bool,
}

const CLAIM: &str = r"
local outcome = redis.call('GET', KEYS[2])
if outcome then return {'finished', outcome} end
if ARGV[1] ~= '' then redis.call('SADD', KEYS[3], ARGV[1]) end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'exists', state} end
redis.call('HSET', KEYS[1], 'state', 'planning', 'kind', ARGV[2], 'options', ARGV[3],
  'input', ARGV[4], 'created_ms', ARGV[5], 'total', 0, 'published', 0,
  'succeeded', 0, 'failed', 0, 'retries', 0)
return {'new', 'planning'}
";

const MARK_PLANNED: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'planning' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'planned', 'total', ARGV[1], 'published', 0)
return 1
";

const MARK_RUNNING: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'planned' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'published', ARGV[1])
return 1
";

const RECORD_RESULT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown-task', 0} end
if state == 'finished' then
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  return {'finished', 0}
end
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
  else
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
  end
  redis.call('HINCRBY', KEYS[1], 'retries', ARGV[4])
  return {'new', redis.call('SCARD', KEYS[2])}
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  return {'duplicate', redis.call('SCARD', KEYS[2])}
end
return {'unknown-subtask', 0}
";

const STORE_OUTCOME: &str = r"
local existing = redis.call('GET', KEYS[2])
if not existing then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  existing = ARGV[1]
    redis.call('HSET', KEYS[1], 'state', 'finished', 'finished_ms', ARGV[3])
  -- Everything kept expires together, set once: a later call must not outlive the outcome.
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
end
return existing
";

const BEGIN_RUN: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'finished' then return -1 end
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
";

const END_RUN: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
end
return 0
";

const RESET_PLAN: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[4], 'state') ~= 'planning' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

const APPEND_PLAN: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[4], 'state') ~= 'planning' then return 0 end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[2]) then return 0 end
local first = tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('SADD', KEYS[2], tostring(first + i - 3))
end
return 1
";

const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

// Scripts are hashed once; invocations then go by EVALSHA.
static CLAIM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));
static MARK_PLANNED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_PLANNED));
static MARK_RUNNING_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_RUNNING));
static RECORD_RESULT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_RESULT));
static STORE_OUTCOME_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_OUTCOME));
static RELEASE_LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LEASE));
static RENEW_LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LEASE));
static BEGIN_RUN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN_RUN));
static END_RUN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(END_RUN));
static RESET_PLAN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RESET_PLAN));
static APPEND_PLAN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_PLAN));

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A Redis connection (reconnecting by itself, every command time-bounded) and the scripts.
#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
}

/// How many plan entries or result fields go to Redis per round trip.
const CHUNK: usize = 1000;

impl Store {
    /// Connects to Redis. Every command fails after `timeout` instead of hanging.
    ///
    /// # Errors
    /// A malformed URL or an unreachable server.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { connection })
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Logs a warning for every server setting that weakens Chorus's guarantees.
    pub async fn warn_about_settings(&self) {
        let mut conn = self.conn();
        let required: [(&str, &[&str]); 3] = [
            ("appendonly", &["yes"]),
            ("appendfsync", &["everysec", "always"]),
            ("maxmemory-policy", &["noeviction"]),
        ];
        for (name, accepted) in required {
            let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(pair) if pair.get(1).is_some_and(|v| accepted.contains(&v.as_str())) => {}
                Ok(pair) => tracing::warn!(
                    setting = name,
                    value = pair.get(1).map(String::as_str).unwrap_or("?"),
                    wanted = accepted.join(" or "),
                    "Redis setting weakens Chorus's guarantees (see docs/reliability.md)"
                ),
                Err(error) => {
                    tracing::debug!(setting = name, %error, "cannot read Redis setting");
                }
            }
        }
    }

    /// Registers `waiter` for task `id` and creates the task if the id is new.
    ///
    /// # Errors
    /// Redis fails, or holds an outcome that does not decode.
    pub async fn claim(
        &self,
        id: &str,
        waiter: Option<&ReplyTarget>,
        kind: &str,
        options: &[u8],
        input: &[u8],
    ) -> Result<Claim, StoreError> {
        let keys = TaskKeys::new(id);
        let waiter = match waiter {
            Some(target) => {
                protocol::encode(target).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => Vec::new(),
        };
        let (status, value): (String, Vec<u8>) = CLAIM_SCRIPT
            .key(&keys.task)
            .key(&keys.outcome)
            .key(&keys.waiters)
            .arg(waiter)
            .arg(kind)
            .arg(options)
            .arg(input)
            .arg(now_ms())
            .invoke_async(&mut self.conn())
            .await?;
        match status.as_str() {
            "finished" => Ok(Claim::Finished(decode_outcome(&value)?)),
            "new" => Ok(Claim::New),
            _ => Ok(Claim::Exists(TaskState::parse(&String::from_utf8_lossy(
                &value,
            ))?)),
        }
    }

    /// Records the plan: payloads in order, and every subtask id as pending, then moves the task
    /// to `planned`. Starts from scratch each time, so a crash half-way is repaired by a rerun.
    /// Every write checks that `lease` is still held and the task still `planning`, so a holder
    /// whose lease lapsed (a long pause) cannot overwrite the work of the one that took over.
    ///
    /// # Errors
    /// Redis fails, or the lease was lost or the task left the `planning` state meanwhile
    /// ([`StoreError::Fenced`]).
    pub async fn record_plan(
        &self,
        id: &str,
        lease: &Lease,
        payloads: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        let mut conn = self.conn();
        let fenced = || {
            StoreError::Fenced(format!(
                "task {id}: plan lease lost or task no longer planning"
            ))
        };
        let reset: i64 = RESET_PLAN_SCRIPT
            .key(&keys.plan)
            .key(&keys.pending)
            .key(&keys.plan_lease)
            .key(&keys.task)
            .arg(&lease.token)
            .invoke_async(&mut conn)
            .await?;
        if reset != 1 {
            return Err(fenced());
        }
        for (chunk_index, chunk) in payloads.chunks(CHUNK).enumerate() {
            let appended: i64 = APPEND_PLAN_SCRIPT
                .key(&keys.plan)
                .key(&keys.pending)
                .key(&keys.plan_lease)
                .key(&keys.task)
                .arg(&lease.token)
                .arg(chunk_index * CHUNK)
                .arg(chunk)
                .invoke_async(&mut conn)
                .await?;
            if appended != 1 {
                return Err(fenced());
            }
        }
        let moved: i64 = MARK_PLANNED_SCRIPT
            .key(&keys.task)
            .arg(payloads.len())
            .invoke_async(&mut conn)
            .await?;
        if moved == 1 {
            Ok(())
        } else {
            Err(fenced())
        }
    }

    /// Notes that a run of `what` (a subtask id, `plan` or `synth`) of task `task` starts.
    /// Returns the runs of it that started and have not finished, this one included — or
    /// `None` when the task is finished or unknown (nothing left to run).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn begin_run(&self, task: &str, what: &str) -> Result<Option<u64>, StoreError> {
        let keys = TaskKeys::new(task);
        let runs: i64 = BEGIN_RUN_SCRIPT
            .key(&keys.task)
            .key(&keys.starts)
            .arg(what)
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
        END_RUN_SCRIPT
            .key(&keys.starts)
            .arg(what)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Reads plan entries `start..end` (subtask ids are their indices).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn plan_range(
        &self,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("LRANGE")
            .arg(&keys.plan)
            .arg(start)
            .arg(end - 1)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Remembers that subtasks `0..published` are confirmed by the broker.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn set_published(&self, id: &str, published: u64) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        redis::cmd("HSET")
            .arg(&keys.task)
            .arg("published")
            .arg(published)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves a planned task to `running` once its whole plan is confirmed. A task that finished
    /// meanwhile stays finished.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_running(&self, id: &str, published: u64) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        MARK_RUNNING_SCRIPT
            .key(&keys.task)
            .arg(published)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Records one settled subtask, once: a duplicate changes nothing.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn record_result(
        &self,
        task: &str,
        subtask: &str,
        attempts: u32,
        outcome: &SubtaskOutcome,
    ) -> Result<Recorded, StoreError> {
        let keys = TaskKeys::new(task);
        let succeeded = matches!(outcome, SubtaskOutcome::Succeeded(_));
        // Encodes like a `StoredResult`, without copying the output.
        #[derive(Serialize)]
        struct StoredResultRef<'a> {
            attempts: u32,
            outcome: &'a SubtaskOutcome,
        }
        let record = protocol::encode(&StoredResultRef { attempts, outcome })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (status, remaining): (String, u64) = RECORD_RESULT_SCRIPT
            .key(&keys.task)
            .key(&keys.pending)
            .key(&keys.results)
            .arg(subtask)
            .arg(record)
            .arg(if succeeded { "1" } else { "0" })
            .arg(attempts.saturating_sub(1))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match status.as_str() {
            "new" => Recorded::New { remaining },
            "duplicate" => Recorded::Duplicate { remaining },
            "finished" => Recorded::TaskFinished,
            "unknown-task" => Recorded::UnknownTask,
            _ => Recorded::UnknownSubtask,
        })
    }

    /// Unsettled subtasks of a task.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn pending_count(&self, id: &str) -> Result<u64, StoreError> {
        let keys = TaskKeys::new(id);
        Ok(redis::cmd("SCARD")
            .arg(&keys.pending)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Reads the task hash; `None` when the task is unknown (or expired).
    ///
    /// # Errors
    /// Redis fails, or the hash is not one Chorus wrote.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let keys = TaskKeys::new(id);
        let fields: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(&keys.task)
            .query_async(&mut self.conn())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let number = |name: &str| -> u64 { text(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let state =
            text("state").ok_or_else(|| StoreError::Corrupt(format!("task {id} has no state")))?;
        Ok(Some(TaskRecord {
            state: TaskState::parse(&state)?,
            kind: text("kind").unwrap_or_default(),
            options: fields.get("options").cloned().unwrap_or_default(),
            input: fields.get("input").cloned().unwrap_or_default(),
            total: number("total"),
            published: number("published"),
            succeeded: number("succeeded"),
            failed: number("failed"),
            retries: number("retries"),
            duplicates: number("duplicates"),
            created_ms: number("created_ms"),
            delivered: number("delivered") == 1,
        }))
    }

    /// Reads every settled subtask, streaming the hash in chunks.
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
                .arg(&keys.results)
                .arg(cursor)
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut conn)
                .await?;
            for (subtask, raw) in entries {
                let stored: StoredResult = protocol::decode(&raw)
                    .map_err(|e| StoreError::Corrupt(format!("result of {id}/{subtask}: {e}")))?;
                results.push((subtask, stored));
            }
            if next == 0 {
                return Ok(results);
            }
            cursor = next;
        }
    }

    /// Stores the outcome unless one is stored already, marks the task finished, sets the TTL on
    /// what is kept and drops the working state. Returns the outcome that is stored, which is
    /// the earlier one if there was one.
    ///
    /// # Errors
    /// Redis fails, or the stored outcome does not decode.
    pub async fn store_outcome(
        &self,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<Outcome, StoreError> {
        let keys = TaskKeys::new(&outcome.id);
        let encoded = protocol::encode(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let stored: Vec<u8> = STORE_OUTCOME_SCRIPT
            .key(&keys.task)
            .key(&keys.outcome)
            .key(&keys.waiters)
            .key(&keys.plan)
            .key(&keys.pending)
            .key(&keys.results)
            .key(&keys.starts)
            .arg(encoded)
            .arg(ttl.as_secs().max(1))
            .arg(now_ms())
            .invoke_async(&mut self.conn())
            .await?;
        decode_outcome(&stored)
    }

    /// The stored outcome of a task, if it has one.
    ///
    /// # Errors
    /// Redis fails, or the outcome does not decode.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        let keys = TaskKeys::new(id);
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys.outcome)
            .query_async(&mut self.conn())
            .await?;
        raw.map(|bytes| decode_outcome(&bytes)).transpose()
    }

    /// Everyone waiting for the outcome of a task.
    ///
    /// # Errors
    /// Redis fails, or a waiter entry does not decode.
    pub async fn waiters(&self, id: &str) -> Result<Vec<ReplyTarget>, StoreError> {
        let keys = TaskKeys::new(id);
        let raw: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(&keys.waiters)
            .query_async(&mut self.conn())
            .await?;
        raw.iter()
            .map(|bytes| {
                protocol::decode(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("waiter of {id}: {e}")))
            })
            .collect()
    }

    /// Notes that every waiter has been sent the outcome.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_delivered(&self, id: &str) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        redis::cmd("HSET")
            .arg(&keys.task)
            .arg("delivered")
            .arg(1)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Takes the lease at `key` if nobody holds it. While the returned guard lives, a background
    /// task renews it; a crashed holder's lease lapses after `ttl`.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn())
            .await?;
        if taken.is_none() {
            return Ok(None);
        }
        let stop = CancellationToken::new();
        let renewal = {
            let store = self.clone();
            let key = key.to_owned();
            let token = token.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis((ttl_ms / 3).max(1));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(every) => {}
                    }
                    let renewed: Result<i64, _> = RENEW_LEASE_SCRIPT
                        .key(&key)
                        .arg(&token)
                        .arg(ttl_ms)
                        .invoke_async(&mut store.conn())
                        .await;
                    if let Err(error) = renewed {
                        tracing::warn!(lease = %key, %error, "cannot renew lease");
                    }
                }
            })
        };
        drop(renewal);
        Ok(Some(Lease {
            store: self.clone(),
            key: key.to_owned(),
            token,
            stop,
        }))
    }
}

/// A held lease; [`Lease::release`] gives it back, dropping it lets it lapse.
pub struct Lease {
    store: Store,
    key: String,
    /// Owner token, checked by the scripts that write under the lease.
    token: String,
    stop: CancellationToken,
}

impl Lease {
    /// Gives the lease back if it is still ours.
    ///
    /// # Errors
    /// Redis fails; the lease then lapses by itself.
    pub async fn release(self) -> Result<(), StoreError> {
        self.stop.cancel();
        RELEASE_LEASE_SCRIPT
            .key(&self.key)
            .arg(&self.token)
            .invoke_async::<i64>(&mut self.store.conn())
            .await?;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome, StoreError> {
    protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored outcome: {e}")))
}
