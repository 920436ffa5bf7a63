//! Redis state of every task: key layout, the atomic Lua scripts of the fan-in, and leases.
//!
//! All keys of one task share the hash tag `{<task-id>}` (`chorus:{<id>}:task`, `...:plan`,
//! ...), so every script touches a single slot, as Redis Cluster requires (the connection itself
//! is to a single Redis for now).
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `task` | hash | state, kind, options, input, counters (duplicates included), timestamps, cap, in-flight count, round |
//! | `waiters` | set | encoded [`ReplyTarget`]s that get the outcome |
//! | `plan` | hash | subtask id → encoded [`PlanEntry`] |
//! | `order` | list | subtask ids in plan order (spawned and added ones appended) |
//! | `wave` | list | ids of the first wave, published by the orchestrator (absent when it is `order`) |
//! | `pending` | set | ids of subtasks not settled yet |
//! | `results` | hash | subtask id → encoded [`SubtaskOutcome`] with attempts |
//! | `done` | hash | subtask id → `ok`, `failed` or `skipped` |
//! | `waiting` | hash | subtask id → dependencies not settled yet |
//! | `dependents` | hash | subtask id → space-separated ids that wait for it |
//! | `ready` | list | ids whose dependencies succeeded, waiting for a slot under the cap |
//! | `outbox` | set | ids released after planning whose publication is not confirmed yet |
//! | `worker-types` | hash | subtask id → worker type, for types other than `default` |
//! | `types` | hash | per worker type `<type>` total and `<type>:released/ok/failed/skipped` counts |
//! | `children` | set | ids of child tasks started by subtasks |
//! | `starts` | hash | subtask id, `plan` or `synth` → runs started and not finished (poison detection) |
//! | `outcome` | string | the encoded [`Outcome`], kept for the outcome TTL |
//! | `plan-lease`, `synth-lease` | string | owner token of the process planning / synthesizing |

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::LazyLock,
    time::Duration,
};

use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, FromRedisValue, Script};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    error::StoreError,
    graph::FirstWave,
    protocol::{self, Outcome, PlanEntry, ReplyTarget, ResultMessage, SubtaskOutcome},
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

/// The keys of one task, made on demand (a script call needs only some of them).
#[derive(Clone, Debug)]
pub struct TaskKeys {
    /// `chorus:{<id>}:`
    prefix: String,
}

impl TaskKeys {
    /// Keys of task `id`.
    pub fn new(id: &str) -> Self {
        Self {
            prefix: format!("chorus:{{{id}}}:"),
        }
    }

    fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + suffix.len());
        key.push_str(&self.prefix);
        key.push_str(suffix);
        key
    }

    /// Task hash.
    pub fn task(&self) -> String {
        self.key("task")
    }

    /// Set of reply targets.
    pub fn waiters(&self) -> String {
        self.key("waiters")
    }

    /// Plan entries by subtask id.
    pub fn plan(&self) -> String {
        self.key("plan")
    }

    /// Set of unsettled subtask ids.
    pub fn pending(&self) -> String {
        self.key("pending")
    }

    /// Hash of settled subtasks.
    pub fn results(&self) -> String {
        self.key("results")
    }

    /// The outcome.
    pub fn outcome(&self) -> String {
        self.key("outcome")
    }

    /// Hash of subtask id → runs started after a redelivery (poison detection).
    pub fn starts(&self) -> String {
        self.key("starts")
    }

    /// Lease of the orchestrator planning and publishing the task.
    pub fn plan_lease(&self) -> String {
        self.key("plan-lease")
    }

    /// Lease of the synthesizer finishing the task.
    pub fn synth_lease(&self) -> String {
        self.key("synth-lease")
    }

    /// Subtask ids in plan order.
    pub fn order(&self) -> String {
        self.key("order")
    }

    /// First-wave ids, when not the whole order.
    pub fn wave(&self) -> String {
        self.key("wave")
    }

    /// Settled status per subtask.
    pub fn done(&self) -> String {
        self.key("done")
    }

    /// Unmet dependency counts.
    pub fn waiting(&self) -> String {
        self.key("waiting")
    }

    /// Who waits for whom.
    pub fn dependents(&self) -> String {
        self.key("dependents")
    }

    /// Released when a slot frees.
    pub fn ready(&self) -> String {
        self.key("ready")
    }

    /// Released, publication unconfirmed.
    pub fn outbox(&self) -> String {
        self.key("outbox")
    }

    /// Per worker type counters.
    pub fn types(&self) -> String {
        self.key("types")
    }

    /// Child task ids.
    pub fn children(&self) -> String {
        self.key("children")
    }

    /// Subtask id → worker type, for subtasks of a type other than `default`.
    pub fn worker_types(&self) -> String {
        self.key("worker-types")
    }

    /// The keys the graph scripts take, in the order of their Lua prelude.
    fn graph(&self) -> [String; 12] {
        [
            self.task(),
            self.pending(),
            self.results(),
            self.plan(),
            self.order(),
            self.waiting(),
            self.dependents(),
            self.ready(),
            self.outbox(),
            self.types(),
            self.done(),
            self.worker_types(),
        ]
    }

    /// KEYS 1 to 11 of the plan scripts (see `PLAN_ENTRY_PRELUDE`): plan lease, task, plan,
    /// order, pending, waiting, dependents, types, worker types, wave, ready.
    fn plan_layout(&self) -> [String; 11] {
        [
            self.plan_lease(),
            self.task(),
            self.plan(),
            self.order(),
            self.pending(),
            self.waiting(),
            self.dependents(),
            self.types(),
            self.worker_types(),
            self.wave(),
            self.ready(),
        ]
    }

    /// Working state dropped when the task finishes.
    fn working(&self) -> [String; 12] {
        [
            self.plan(),
            self.order(),
            self.wave(),
            self.pending(),
            self.results(),
            self.done(),
            self.waiting(),
            self.dependents(),
            self.ready(),
            self.outbox(),
            self.starts(),
            self.worker_types(),
        ]
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
pub enum Claim {
    /// The task already has an outcome (a duplicate submission after the end).
    Finished(Outcome),
    /// The id was new: the caller plans the task, straight away when the plan lease came with
    /// the claim (it does unless a lease of an earlier task of that id is still held).
    New(Option<Planning>),
    /// The task exists and is in this state (a duplicate, or a redelivery after a crash).
    Exists(TaskState),
    /// The id was new and the plan made before the claim is recorded with it
    /// ([`Store::claim_planned`]): the caller publishes the first wave under the plan lease.
    Planned {
        /// The plan lease, held.
        lease: Lease,
        /// The task as the claim created it, `planned`.
        record: TaskRecord,
    },
}

/// What a submission asks for, as the claim stores it.
#[derive(Clone, Copy)]
pub struct Submission<'a> {
    /// Kind name.
    pub kind: &'a str,
    /// Encoded [`protocol::ResolvedOptions`].
    pub options: &'a [u8],
    /// Encoded task input.
    pub input: &'a [u8],
    /// The parent subtask of a child task.
    pub parent: Option<&'a protocol::ParentRef>,
}

/// A new task claimed together with its plan lease, its planner run counted ([`PLAN_RUN`]).
pub struct Planning {
    /// The plan lease, held.
    pub lease: Lease,
    /// Planner runs started and not ended, this one included.
    pub runs: u64,
    /// The task as the claim created it.
    pub record: TaskRecord,
}

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
}

/// A lease just taken by [`Store::lease_run`] and what was read under it.
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

/// A lease to take for a run, and how much to read with it.
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

/// What the call that recorded a task's last results did with its synthesis lease.
pub enum SettledLease {
    /// Taken, with what synthesis reads first.
    Taken(Box<LeasedRun>),
    /// Held by another process, which is finishing the task.
    Held,
}

impl LeasedRun {
    /// Ends the run counted with the lease and gives the lease back, for a run that stops
    /// before it starts. Failures are logged: the count then stays (as after a crash) and the
    /// lease lapses by itself.
    pub async fn give_back(self, id: &str, run: &str) {
        if self.runs.is_some() {
            if let Err(error) = self.lease.store.end_run(id, run).await {
                tracing::debug!(task = id, %error, "cannot end the run given back");
            }
        }
        self.lease.let_go(id).await;
    }
}

/// A settled task's plan order and every result, as synthesis reads them.
pub struct Settled {
    /// Subtask ids in plan order.
    pub order: Vec<String>,
    /// Every settled subtask.
    pub results: Vec<(String, StoredResult)>,
}

/// Name under which planner runs are counted (see [`Store::begin_run`]).
pub const PLAN_RUN: &str = "plan";

/// Subtasks a script released: their plan entries, to publish.
pub type Released = Vec<PlanEntry>;

/// What recording a result did.
#[derive(Debug, PartialEq)]
pub enum Recorded {
    /// The results were looked at one by one.
    Batch {
        /// What happened to each result, in order.
        statuses: Vec<ResultStatus>,
        /// Unsettled subtasks left.
        remaining: u64,
        /// Subtasks these results released (dependencies met, or slots freed under the cap).
        released: Released,
        /// Subtasks settled as skipped because one of these failed.
        skipped: Vec<String>,
    },
    /// The task is already finished; nothing changed.
    TaskFinished,
    /// No such task in Redis.
    UnknownTask,
}

/// What recording did with one result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultStatus {
    /// First time for this subtask: recorded.
    New,
    /// Already recorded before; nothing changed.
    Duplicate,
    /// The result spawned more subtasks than the task may have in all; nothing was recorded.
    TooManySubtasks {
        /// Subtasks the task would have had.
        would_have: u64,
    },
    /// A spawned subtask reuses an existing id or depends on an unknown one; nothing was
    /// recorded.
    SpawnConflict {
        /// What is wrong.
        reason: String,
    },
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
    /// Settled as skipped.
    pub skipped: u64,
    /// Current review round, 1 for the first.
    pub round: u32,
    /// Whether the first wave is the whole plan order (no dependencies, no cap).
    pub wave_is_order: bool,
    /// Subtasks in the first wave.
    pub wave_len: u64,
    /// The parent subtask of a child task, encoded [`protocol::ParentRef`].
    pub parent: Option<Vec<u8>>,
}

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

/// KEYS: task, outcome, waiters, plan lease, starts. ARGV: waiter, kind, options, input,
/// created ms, parent, lease token, lease ttl ms, planner run name.
const CLAIM: &str = r"
local outcome = redis.call('GET', KEYS[2])
if outcome then return {'finished', outcome} end
if ARGV[1] ~= '' then redis.call('SADD', KEYS[3], ARGV[1]) end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {'exists', state} end
redis.call('HSET', KEYS[1], 'state', 'planning', 'kind', ARGV[2], 'options', ARGV[3],
  'input', ARGV[4], 'created_ms', ARGV[5], 'total', 0, 'published', 0,
  'succeeded', 0, 'failed', 0, 'skipped', 0, 'retries', 0, 'round', 1, 'inflight', 0)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'parent', ARGV[6]) end
-- The new task's plan lease and planner run come with the claim, saving two round trips.
if not redis.call('SET', KEYS[4], ARGV[7], 'NX', 'PX', ARGV[8]) then return {'new', '-1'} end
return {'new', tostring(redis.call('HINCRBY', KEYS[5], ARGV[9], 1))}
";

const MARK_PLANNED: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'planning' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'planned', 'total', ARGV[2], 'published', 0,
  'cap', ARGV[3], 'inflight', ARGV[4], 'wave_len', ARGV[4], 'wave_is_order', ARGV[5],
  'graph', ARGV[6])
for i = 7, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], ARGV[i] .. ':released', ARGV[i + 1])
end
return 1
";

/// KEYS: task, plan lease. ARGV: subtasks published, lease token. The last write under the
/// plan lease gives it back too.
const MARK_RUNNING: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
if redis.call('HGET', KEYS[1], 'state') ~= 'planned' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'published', ARGV[1])
return 1
";

/// KEYS: task, synthesis lease. ARGV: lease token (empty for none). The last write under the
/// synthesis lease gives it back too.
const MARK_DELIVERED: &str = r"
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'delivered', 1)
return 1
";

/// Lua shared by the scripts that change the dependency graph; their KEYS follow
/// [`TaskKeys::graph`].
const GRAPH_PRELUDE: &str = r"
local T, PENDING, RESULTS, PLAN, ORDER, WAITING, DEPENDENTS, READY, OUTBOX, TYPES, DONE, WTYPE =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12]

local function split(s)
  local out = {}
  if s then for w in string.gmatch(s, '%S+') do out[#out + 1] = w end end
  return out
end

local function type_of(id)
  return redis.call('HGET', WTYPE, id) or 'default'
end

local skipped = {}

local function skip_one(id, cause)
  if redis.call('SREM', PENDING, id) == 0 then return false end
  redis.call('HDEL', WAITING, id)
  redis.call('HSET', RESULTS, id, cmsgpack.pack({attempts = 0,
    outcome = {skipped = 'dependency ' .. cause .. ' did not succeed'}}))
  redis.call('HSET', DONE, id, 'skipped')
  redis.call('HINCRBY', T, 'skipped', 1)
  redis.call('HINCRBY', TYPES, type_of(id) .. ':skipped', 1)
  skipped[#skipped + 1] = id
  return true
end

-- Settles everything that waits, directly or not, on `cause` as skipped.
local function skip_dependents_of(cause)
  local queue = {}
  for _, d in ipairs(split(redis.call('HGET', DEPENDENTS, cause))) do queue[#queue + 1] = {d, cause} end
  local i = 1
  while i <= #queue do
    local d, why = queue[i][1], queue[i][2]
    i = i + 1
    if redis.call('HEXISTS', WAITING, d) == 1 and skip_one(d, why) then
      for _, n in ipairs(split(redis.call('HGET', DEPENDENTS, d))) do queue[#queue + 1] = {n, d} end
    end
  end
end

local function satisfy_dependents_of(id)
  for _, d in ipairs(split(redis.call('HGET', DEPENDENTS, id))) do
    if redis.call('HEXISTS', WAITING, d) == 1 then
      if redis.call('HINCRBY', WAITING, d, -1) <= 0 then
        redis.call('HDEL', WAITING, d)
        redis.call('RPUSH', READY, d)
      end
    end
  end
end

-- Adds or redoes a subtask whose dependencies are existing subtasks.
local function add_entry(id, raw, wtype, deps)
  local existed = redis.call('HEXISTS', PLAN, id) == 1
  redis.call('HSET', PLAN, id, raw)
  if wtype ~= 'default' then redis.call('HSET', WTYPE, id, wtype) else redis.call('HDEL', WTYPE, id) end
  if not existed then
    redis.call('RPUSH', ORDER, id)
    redis.call('HINCRBY', T, 'total', 1)
    redis.call('HINCRBY', TYPES, wtype, 1)
  end
  redis.call('SADD', PENDING, id)
  local unmet, failed_dep = 0, nil
  for _, dep in ipairs(split(deps)) do
    local status = redis.call('HGET', DONE, dep)
    if status == 'ok' then
    elseif status then failed_dep = failed_dep or dep
    else
      unmet = unmet + 1
      local list = redis.call('HGET', DEPENDENTS, dep)
      redis.call('HSET', DEPENDENTS, dep, list and (list .. ' ' .. id) or id)
    end
  end
  if failed_dep then skip_one(id, failed_dep)
  elseif unmet > 0 then
    redis.call('HSET', WAITING, id, unmet)
    redis.call('HSET', T, 'graph', 1)
  else redis.call('RPUSH', READY, id) end
end

-- Forgets the settled result of `id` so it can run again.
local function reset_result(id)
  local status = redis.call('HGET', DONE, id)
  if not status then return end
  local counter = ({ok = 'succeeded', failed = 'failed', skipped = 'skipped'})[status]
  local suffix = ({ok = ':ok', failed = ':failed', skipped = ':skipped'})[status]
  local wtype = type_of(id)
  redis.call('HINCRBY', T, counter, -1)
  redis.call('HINCRBY', TYPES, wtype .. suffix, -1)
  if status ~= 'skipped' then redis.call('HINCRBY', TYPES, wtype .. ':released', -1) end
  redis.call('HDEL', DONE, id)
  redis.call('HDEL', RESULTS, id)
end

-- Moves ready subtasks to the outbox while the cap allows (the in-flight count is kept only
-- under a cap); returns {id, entry, ...}.
local function release(cap)
  local inflight = 0
  if cap > 0 then inflight = tonumber(redis.call('HGET', T, 'inflight') or '0') or 0 end
  local out = {}
  while cap == 0 or inflight < cap do
    local d = redis.call('LPOP', READY)
    if not d then break end
    if redis.call('SISMEMBER', PENDING, d) == 1 then
      redis.call('SADD', OUTBOX, d)
      inflight = inflight + 1
      redis.call('HINCRBY', TYPES, type_of(d) .. ':released', 1)
      out[#out + 1] = d
      out[#out + 1] = redis.call('HGET', PLAN, d)
    end
  end
  if cap > 0 then redis.call('HSET', T, 'inflight', inflight) end
  return out
end

local function cap_of()
  return tonumber(redis.call('HGET', T, 'cap') or '0') or 0
end

local function reply(status, released)
  local out = {status, redis.call('SCARD', PENDING), #skipped}
  for _, id in ipairs(skipped) do out[#out + 1] = id end
  for _, v in ipairs(released) do out[#out + 1] = v end
  return out
end
";

/// Records the results of one task, each once, in one atomic call. KEYS: [`TaskKeys::graph`],
/// then the synthesis lease and the run counts. ARGV: subtask limit, number of results, lease
/// token (empty for no lease), lease ttl ms, run name, most results to return with the lease,
/// then per result: subtask, record, `1` succeeded / `0` failed, retries, review round (0:
/// not stated), spawned count, and per spawned entry: id, encoded entry, worker type,
/// space-separated dependencies. A result of an earlier round than the task's is a duplicate:
/// a redelivery of what settled that round, never the result of the subtask sent back since.
/// Replies `{recorded, lease}`: `recorded` is `{'batch', pending, #skipped, skipped...,
/// #results, status per result..., released id, entry, ...}`, where a status is `new`,
/// `duplicate`, `unknown-subtask`, `limit:<would have>` or `conflict:<reason>` (the last two
/// recorded nothing). When a token was given and these results left nothing pending, `lease`
/// is what `lease_run` replies for the synthesis lease, or `held`; else nil.
const RECORD_RESULTS: &str = r"
local limit, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local meta = redis.call('HMGET', T, 'state', 'cap', 'graph', 'round')
local state, cap, graph = meta[1], tonumber(meta[2] or '0') or 0, meta[3] == '1'
local round = tonumber(meta[4] or '1') or 1
if not state then return {{'unknown-task', 0, 0}, false} end
if state == 'finished' then
  redis.call('HINCRBY', T, 'duplicates', count)
  return {{'finished', 0, 0}, false}
end

local function spawn_problem(nspawn, base)
  local would_have = tonumber(redis.call('HGET', T, 'total')) + nspawn
  if would_have > limit then return 'limit:' .. would_have end
  local siblings = {}
  for i = 0, nspawn - 1 do
    local sid = ARGV[base + i * 4]
    if redis.call('HEXISTS', PLAN, sid) == 1 then
      return 'conflict:spawned subtask id ' .. sid .. ' is already used in this task'
    end
    for _, dep in ipairs(split(ARGV[base + 3 + i * 4])) do
      if not siblings[dep] and redis.call('HEXISTS', PLAN, dep) == 0 then
        return 'conflict:spawned subtask ' .. sid .. ' depends on unknown subtask ' .. dep
      end
    end
    siblings[sid] = true
  end
  return nil
end

local statuses, spawned, duplicates = {}, false, 0
local succeeded, failed, retries = 0, 0, 0
local per_type = {}
local i = 7
while i <= #ARGV do
  local id, record, ok = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local retried, of_round = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local nspawn = tonumber(ARGV[i + 5])
  local base = i + 6
  i = base + nspawn * 4
  -- Taken off the pending set at once when nothing spawned can refuse it (one call, not two).
  local status = 'gone'
  if of_round > 0 and of_round < round then
    duplicates = duplicates + 1
    status = 'duplicate'
  elseif nspawn == 0 then
    if redis.call('SREM', PENDING, id) == 1 then status = 'new' end
  elseif redis.call('SISMEMBER', PENDING, id) == 1 then
    status = spawn_problem(nspawn, base) or 'new'
    if status == 'new' then redis.call('SREM', PENDING, id) end
  end
  if status == 'gone' then
    if redis.call('HEXISTS', RESULTS, id) == 1 then
      duplicates = duplicates + 1
      status = 'duplicate'
    else
      status = 'unknown-subtask'
    end
  end
  if status == 'new' then
    redis.call('HSET', RESULTS, id, record)
    local suffix
    if ok then
      redis.call('HSET', DONE, id, 'ok')
      succeeded, suffix = succeeded + 1, ':ok'
    else
      redis.call('HSET', DONE, id, 'failed')
      failed, suffix = failed + 1, ':failed'
    end
    local counter = type_of(id) .. suffix
    per_type[counter] = (per_type[counter] or 0) + 1
    retries = retries + retried
    if cap > 0 then redis.call('HINCRBY', T, 'inflight', -1) end
    for s = 0, nspawn - 1 do
      local at = base + s * 4
      add_entry(ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
    end
    if nspawn > 0 then
      spawned = true
      graph = redis.call('HGET', T, 'graph') == '1'
    end
    if graph then
      if ok then satisfy_dependents_of(id) else skip_dependents_of(id) end
    end
  end
  statuses[#statuses + 1] = status
end
-- Counters are added once per call: a batch of a thousand results is three writes, not three
-- thousand.
if succeeded > 0 then redis.call('HINCRBY', T, 'succeeded', succeeded) end
if failed > 0 then redis.call('HINCRBY', T, 'failed', failed) end
if retries > 0 then redis.call('HINCRBY', T, 'retries', retries) end
if duplicates > 0 then redis.call('HINCRBY', T, 'duplicates', duplicates) end
for counter, n in pairs(per_type) do redis.call('HINCRBY', TYPES, counter, n) end
-- A task without dependencies, cap or spawns has nothing to release: its whole plan went out
-- with the first wave.
local released = {}
if graph or cap > 0 or spawned then released = release(cap) end
local pending = redis.call('SCARD', PENDING)
local out = {'batch', pending, #skipped}
for _, id in ipairs(skipped) do out[#out + 1] = id end
out[#out + 1] = #statuses
for _, st in ipairs(statuses) do out[#out + 1] = st end
for _, v in ipairs(released) do out[#out + 1] = v end
-- The results that settle the task take its synthesis lease too: one round trip less between
-- the last result and the outcome, and no gap in which the task is settled but unleased.
local lease = false
if pending == 0 and ARGV[3] ~= '' and (state == 'planned' or state == 'running') then
  lease = lease_run(KEYS[13], T, KEYS[14], PENDING, ORDER, RESULTS, ARGV[3], ARGV[4], ARGV[5],
    ARGV[6], {state = state, pending = 0}) or 'held'
end
return {out, lease}
";

/// Redoes or adds subtasks for another review round, under the synthesis lease.
/// ARGV: lease token, then per entry: id, encoded entry, worker type, dependencies.
const REVISE: &str = r"
if redis.call('GET', KEYS[13]) ~= ARGV[1] then return {'fenced', 0, 0} end
local state = redis.call('HGET', T, 'state')
if state ~= 'running' and state ~= 'planned' then return {'fenced', 0, 0} end
for i = 2, #ARGV, 4 do reset_result(ARGV[i]) end
for i = 2, #ARGV, 4 do add_entry(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) end
redis.call('HINCRBY', T, 'round', 1)
return reply('revised', release(cap_of()))
";

/// Publication of the outbox entries in ARGV is confirmed.
const CLEAR_OUTBOX: &str = r"
for i = 1, #ARGV do redis.call('SREM', KEYS[1], ARGV[i]) end
return 0
";

/// KEYS: task, outcome, waiters, types, children, then the working keys to drop.
const STORE_OUTCOME: &str = r"
local existing = redis.call('GET', KEYS[2])
if not existing then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  existing = ARGV[1]
  redis.call('HSET', KEYS[1], 'state', 'finished', 'finished_ms', ARGV[3])
  -- Everything kept expires together, set once: a later call must not outlive the outcome.
  for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', unpack(KEYS, 6))
end
-- What delivery needs comes back with it; waiters read after the outcome is set miss none.
return {existing, redis.call('HGET', KEYS[1], 'parent') or '', redis.call('SMEMBERS', KEYS[3]),
  redis.call('SMEMBERS', KEYS[5])}
";

/// Lua shared by the scripts that take a lease for a run: `lease_run` takes the lease at
/// `lease` for `token` unless it is held (then `nil`), and replies the run count as
/// [`BEGIN_RUN`] gives it, the pending count, the task hash and — for a settled task with at
/// most `up_to` results, which synthesis reads next — the plan order and the results. A caller
/// that already read the task's state and pending count in this script passes them as `known`.
const LEASE_PRELUDE: &str = r"
local function lease_run(lease, task, starts, pending_set, order, results, token, ttl, run, up_to,
    known)
  if not redis.call('SET', lease, token, 'NX', 'PX', ttl) then return nil end
  known = known or {}
  local state = known.state or redis.call('HGET', task, 'state')
  local runs = -1
  if state and state ~= 'finished' then runs = redis.call('HINCRBY', starts, run, 1) end
  local pending = known.pending or redis.call('SCARD', pending_set)
  local reply = {runs, pending, redis.call('HGETALL', task)}
  if runs >= 0 and pending == 0 and redis.call('HLEN', results) <= tonumber(up_to) then
    reply[4] = redis.call('LRANGE', order, 0, -1)
    reply[5] = redis.call('HGETALL', results)
  end
  return reply
end
";

/// KEYS: lease, task, starts, pending, order, results. ARGV: token, ttl ms, run name, most
/// results to return. Nil when the lease is held; else what `lease_run` replies.
const LEASE_RUN: &str = r"
return lease_run(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], ARGV[3],
  ARGV[4]) or false
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

/// KEYS: plan lease, task, then the keys to clear.
const RESET_PLAN: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'planning' then return 0 end
redis.call('DEL', unpack(KEYS, 3))
return 1
";

/// Lua shared by the scripts that record plan entries; KEYS 3 to 9 are plan, order, pending,
/// waiting, dependents, types and worker types, and KEYS 10 and 11 the wave and ready lists.
/// An entry is five ARGV values from `p`: id, encoded entry, worker type, unmet dependency
/// count, space-separated dependents.
const PLAN_ENTRY_PRELUDE: &str = r"
-- Calls `command` on `key` with `values` appended, in slices that stay well inside Lua's stack;
-- an even slice size keeps field-value pairs together. One call per slice, not per value: a
-- command inside a script costs several microseconds whatever its size.
local function call_with_all(command, key, values)
  for i = 1, #values, 4000 do
    redis.call(command, key, unpack(values, i, math.min(i + 3999, #values)))
  end
end

-- `count` plan entries from ARGV at `p`, five values each: id, encoded entry, worker type,
-- unmet dependency count, space-separated dependents. Returns the position after them.
local function write_entries(p, count)
  local plan, order, per_type, typed, waiting, dependents = {}, {}, {}, {}, {}, {}
  for _ = 1, count do
    local id, wtype = ARGV[p], ARGV[p + 2]
    plan[#plan + 1] = id
    plan[#plan + 1] = ARGV[p + 1]
    order[#order + 1] = id
    per_type[wtype] = (per_type[wtype] or 0) + 1
    if wtype ~= 'default' then
      typed[#typed + 1] = id
      typed[#typed + 1] = wtype
    end
    if ARGV[p + 3] ~= '0' then
      waiting[#waiting + 1] = id
      waiting[#waiting + 1] = ARGV[p + 3]
    end
    if ARGV[p + 4] ~= '' then
      dependents[#dependents + 1] = id
      dependents[#dependents + 1] = ARGV[p + 4]
    end
    p = p + 5
  end
  call_with_all('HSET', KEYS[3], plan)
  call_with_all('RPUSH', KEYS[4], order)
  call_with_all('SADD', KEYS[5], order)
  for wtype, n in pairs(per_type) do redis.call('HINCRBY', KEYS[8], wtype, n) end
  call_with_all('HSET', KEYS[9], typed)
  call_with_all('HSET', KEYS[6], waiting)
  call_with_all('HSET', KEYS[7], dependents)
  return p
end

-- A whole plan from ARGV at `p`: the entry count, five values per entry, then the wave and the
-- ready list, each a count and ids. Returns the position after it.
local function write_plan(p)
  p = write_entries(p + 1, tonumber(ARGV[p]))
  for list = 10, 11 do
    local n = tonumber(ARGV[p])
    call_with_all('RPUSH', KEYS[list], {unpack(ARGV, p + 1, p + n)})
    p = p + 1 + n
  end
  return p
end

-- The task's fields once planned, from ARGV at `p`: total, cap, wave length, whether the wave
-- is the order, whether there is a graph; the (worker type, released) pairs after them, to the
-- end of ARGV, are counted as released.
local function planned_fields(p)
  for i = p + 5, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[8], ARGV[i] .. ':released', ARGV[i + 1])
  end
  return {'state', 'planned', 'total', ARGV[p], 'published', 0, 'cap', ARGV[p + 1],
    'inflight', ARGV[p + 2], 'wave_len', ARGV[p + 2], 'wave_is_order', ARGV[p + 3],
    'graph', ARGV[p + 4]}
end
";

/// KEYS: plan lease, task, plan, order, pending, waiting, dependents, types, worker types.
/// ARGV: token, entries already in `order`, then per entry: id, encoded entry, worker type,
/// unmet dependency count, space-separated dependents.
const APPEND_PLAN: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'planning' then return 0 end
if redis.call('LLEN', KEYS[4]) ~= tonumber(ARGV[2]) then return 0 end
write_entries(3, (#ARGV - 2) / 5)
return 1
";

/// A whole plan of at most [`CHUNK`] entries in one call: [`RESET_PLAN`], [`APPEND_PLAN`], the
/// wave and ready lists and [`MARK_PLANNED`] together, so a small task is planned in one round
/// trip. KEYS: plan lease, task, plan, order, pending, waiting, dependents, types, worker types,
/// wave, ready, then the keys to clear. ARGV: token, then the plan as `write_plan` reads it and
/// the fields as `planned_fields` reads them.
const RECORD_PLAN: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'planning' then return 0 end
redis.call('DEL', unpack(KEYS, 12))
redis.call('HSET', KEYS[2], unpack(planned_fields(write_plan(2))))
return 1
";

/// A new task claimed with its plan already made, in one call: [`CLAIM`] and [`RECORD_PLAN`]
/// together, for a first delivery planned before its claim (its planner run returned, so
/// nothing is counted). KEYS: as [`RECORD_PLAN`] up to ready, then outcome, waiters, then the
/// keys to clear. ARGV: waiter, kind, options, input, created ms, parent, lease token, lease ttl
/// ms, then the plan and fields as in [`RECORD_PLAN`]. Replies as [`CLAIM`] does, except
/// `{'planned', ''}` for a task claimed and planned with its plan lease held; when that lease
/// is held by an earlier task of the id, the task is claimed unplanned (`{'new', '-1'}`).
const CLAIM_PLANNED: &str = r"
local outcome = redis.call('GET', KEYS[12])
if outcome then return {'finished', outcome} end
if ARGV[1] ~= '' then redis.call('SADD', KEYS[13], ARGV[1]) end
local state = redis.call('HGET', KEYS[2], 'state')
if state then return {'exists', state} end
local fields = {'kind', ARGV[2], 'options', ARGV[3], 'input', ARGV[4], 'created_ms', ARGV[5],
  'succeeded', 0, 'failed', 0, 'skipped', 0, 'retries', 0, 'round', 1}
if ARGV[6] ~= '' then
  fields[#fields + 1] = 'parent'
  fields[#fields + 1] = ARGV[6]
end
if not redis.call('SET', KEYS[1], ARGV[7], 'NX', 'PX', ARGV[8]) then
  redis.call('HSET', KEYS[2], 'state', 'planning', 'total', 0, 'published', 0, 'inflight', 0,
    unpack(fields))
  return {'new', '-1'}
end
-- Working keys outlive their task only if something removed it by hand; one check, not a
-- delete per key, on the common path.
if redis.call('EXISTS', unpack(KEYS, 14)) > 0 then redis.call('DEL', unpack(KEYS, 14)) end
local planned = planned_fields(write_plan(9))
for _, v in ipairs(fields) do planned[#planned + 1] = v end
redis.call('HSET', KEYS[2], unpack(planned))
return {'planned', ''}
";

/// KEYS: plan lease, task, list. ARGV: token, then ids to append.
const APPEND_LIST: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'planning' then return 0 end
if #ARGV > 1 then redis.call('RPUSH', KEYS[3], unpack(ARGV, 2)) end
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
static MARK_DELIVERED_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(MARK_DELIVERED));
static RECORD_RESULTS_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{GRAPH_PRELUDE}{LEASE_PRELUDE}{RECORD_RESULTS}")));
static REVISE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{GRAPH_PRELUDE}{REVISE}")));
static CLEAR_OUTBOX_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLEAR_OUTBOX));
static APPEND_LIST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LIST));
static STORE_OUTCOME_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STORE_OUTCOME));
static RELEASE_LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LEASE));
static RENEW_LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LEASE));
static LEASE_RUN_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{LEASE_PRELUDE}{LEASE_RUN}")));
static BEGIN_RUN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN_RUN));
static END_RUN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(END_RUN));
static RESET_PLAN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RESET_PLAN));
static APPEND_PLAN_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PLAN_ENTRY_PRELUDE}{APPEND_PLAN}")));
static RECORD_PLAN_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PLAN_ENTRY_PRELUDE}{RECORD_PLAN}")));
static CLAIM_PLANNED_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PLAN_ENTRY_PRELUDE}{CLAIM_PLANNED}")));

/// What a claim stores beside the submission, encoded.
struct ClaimArgs {
    waiter: Vec<u8>,
    parent: Vec<u8>,
    created_ms: u64,
    token: String,
    ttl_ms: u64,
}

impl ClaimArgs {
    fn new(
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
    ) -> Result<Self, StoreError> {
        let encode = |value: Result<Vec<u8>, _>| {
            value.map_err(|e: crate::error::ProtocolError| StoreError::Corrupt(e.to_string()))
        };
        Ok(Self {
            waiter: match waiter {
                Some(target) => encode(protocol::encode(target))?,
                None => Vec::new(),
            },
            parent: match submission.parent {
                Some(parent) => encode(protocol::encode(parent))?,
                None => Vec::new(),
            },
            created_ms: now_ms(),
            token: new_lease_token(),
            ttl_ms: lease_ttl_ms(lease_ttl),
        })
    }

    /// The ARGV both claim scripts start with: waiter, kind, options, input, created ms,
    /// parent, lease token, lease ttl ms.
    fn add_to(&self, call: &mut redis::ScriptInvocation<'_>, submission: Submission<'_>) {
        call.arg(&self.waiter)
            .arg(submission.kind)
            .arg(submission.options)
            .arg(submission.input)
            .arg(self.created_ms)
            .arg(&self.parent)
            .arg(&self.token)
            .arg(self.ttl_ms);
    }

    /// The task as a claim creates it, `planning`.
    fn record(&self, submission: Submission<'_>) -> TaskRecord {
        TaskRecord {
            state: TaskState::Planning,
            kind: submission.kind.to_owned(),
            options: submission.options.to_vec(),
            input: submission.input.to_vec(),
            total: 0,
            published: 0,
            succeeded: 0,
            failed: 0,
            retries: 0,
            duplicates: 0,
            created_ms: self.created_ms,
            delivered: false,
            skipped: 0,
            round: 1,
            wave_is_order: true,
            wave_len: 0,
            parent: Some(self.parent.clone()).filter(|bytes| !bytes.is_empty()),
        }
    }
}

/// The claim replies other than a new task.
fn claim_reply(status: &str, value: &[u8]) -> Result<Claim, StoreError> {
    match status {
        "finished" => Ok(Claim::Finished(decode_outcome(value)?)),
        _ => Ok(Claim::Exists(TaskState::parse(&String::from_utf8_lossy(
            value,
        ))?)),
    }
}

/// A plan laid out as the plan scripts take it (see `PLAN_ENTRY_PRELUDE`).
struct PlanLayout<'a> {
    entries: &'a [PlanEntry],
    /// Per subtask, the space-separated subtasks that depend on it.
    dependents: HashMap<&'a str, String>,
    /// The wave and ready lists with the plan positions that go in them; both empty when the
    /// wave is the plan order.
    lists: [(String, &'a [usize]); 2],
    released_by_type: BTreeMap<&'a str, u64>,
    wave_is_order: bool,
    wave_len: usize,
    has_graph: bool,
    cap: u32,
}

impl<'a> PlanLayout<'a> {
    fn new(keys: &TaskKeys, entries: &'a [PlanEntry], wave: &'a FirstWave, cap: u32) -> Self {
        let mut dependents: HashMap<&str, String> = HashMap::new();
        for entry in entries {
            for dep in &entry.depends_on {
                let list = dependents.entry(dep.as_str()).or_default();
                if !list.is_empty() {
                    list.push(' ');
                }
                list.push_str(&entry.id);
            }
        }
        let wave_is_order = wave.ready.is_empty() && wave.release.len() == entries.len();
        let lists: [(String, &[usize]); 2] = if wave_is_order {
            [(keys.wave(), &[]), (keys.ready(), &[])]
        } else {
            [(keys.wave(), &wave.release), (keys.ready(), &wave.ready)]
        };
        let mut released_by_type: BTreeMap<&str, u64> = BTreeMap::new();
        for &position in &wave.release {
            if let Some(entry) = entries.get(position) {
                *released_by_type
                    .entry(entry.worker_type.as_str())
                    .or_default() += 1;
            }
        }
        Self {
            entries,
            dependents,
            lists,
            released_by_type,
            wave_is_order,
            wave_len: wave.release.len(),
            has_graph: entries.iter().any(|e| !e.depends_on.is_empty()),
            cap,
        }
    }

    fn id_at(&self, position: usize) -> &str {
        self.entries.get(position).map_or("", |e| e.id.as_str())
    }

    /// One entry's five values.
    fn add_entry(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        entry: &PlanEntry,
    ) -> Result<(), StoreError> {
        call.arg(&entry.id)
            .arg(encode_entry(entry)?)
            .arg(&entry.worker_type)
            .arg(entry.depends_on.len())
            .arg(
                self.dependents
                    .get(entry.id.as_str())
                    .map_or("", String::as_str),
            );
        Ok(())
    }

    /// The task's fields once planned, as `planned_fields` reads them.
    fn add_fields(&self, call: &mut redis::ScriptInvocation<'_>) {
        call.arg(self.entries.len())
            .arg(self.cap)
            .arg(self.wave_len)
            .arg(u8::from(self.wave_is_order))
            .arg(u8::from(self.has_graph));
        for (worker_type, count) in &self.released_by_type {
            call.arg(*worker_type).arg(*count);
        }
    }

    /// The whole plan as `write_plan` reads it, then the fields.
    fn add_whole(&self, call: &mut redis::ScriptInvocation<'_>) -> Result<(), StoreError> {
        call.arg(self.entries.len());
        for entry in self.entries {
            self.add_entry(call, entry)?;
        }
        for (_, positions) in &self.lists {
            call.arg(positions.len());
            for &position in *positions {
                call.arg(self.id_at(position));
            }
        }
        self.add_fields(call);
        Ok(())
    }
}

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
pub const CHUNK: usize = 1000;

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

    /// A handle on the connection (also for scripts kept beside the modules that use them).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Which of `tasks` have an outcome (are over: finished, cancelled, past their deadline),
    /// in one round trip.
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
                let stored: StoredResult = protocol::decode(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("result of {task}/{subtask}: {e}")))?;
                match stored.outcome {
                    SubtaskOutcome::Succeeded(output) => Ok((subtask.clone(), output)),
                    _ => Err(StoreError::Corrupt(format!(
                        "{task}/{subtask} did not succeed"
                    ))),
                }
            })
            .collect()
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

    /// Registers `waiter` for task `id` and creates the task if the id is new, taking its plan
    /// lease (held for `lease_ttl`, renewed while held) and counting its planner run.
    ///
    /// # Errors
    /// Redis fails, or holds an outcome that does not decode.
    pub async fn claim(
        &self,
        id: &str,
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let keys = TaskKeys::new(id);
        let args = ClaimArgs::new(waiter, submission, lease_ttl)?;
        let mut call = CLAIM_SCRIPT.prepare_invoke();
        call.key(keys.task())
            .key(keys.outcome())
            .key(keys.waiters())
            .key(keys.plan_lease())
            .key(keys.starts());
        args.add_to(&mut call, submission);
        call.arg(PLAN_RUN);
        let (status, value): (String, Vec<u8>) = call.invoke_async(&mut self.conn()).await?;
        match status.as_str() {
            "new" => {
                let runs = String::from_utf8_lossy(&value).parse::<u64>().ok();
                Ok(Claim::New(runs.map(|runs| Planning {
                    lease: self.hold_lease(&keys.plan_lease(), args.token.clone(), args.ttl_ms),
                    runs,
                    record: args.record(submission),
                })))
            }
            _ => claim_reply(&status, &value),
        }
    }

    /// Claims a new task whose plan was made before the claim (a first delivery) and records
    /// that plan of at most [`CHUNK`] entries in the same call, taking the plan lease; no
    /// planner run is counted, since this one returned. Otherwise as [`Store::claim`], except
    /// that a new task whose plan lease is still held by an earlier task of the id comes back
    /// as `Claim::New(None)`, claimed but not planned.
    ///
    /// # Errors
    /// Redis fails, an entry does not encode, or the plan has more than [`CHUNK`] entries.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_planned(
        &self,
        id: &str,
        waiter: Option<&ReplyTarget>,
        submission: Submission<'_>,
        lease_ttl: Duration,
        entries: &[PlanEntry],
        wave: &FirstWave,
        cap: u32,
    ) -> Result<Claim, StoreError> {
        if entries.len() > CHUNK {
            return Err(StoreError::Corrupt(format!(
                "task {id}: a plan of {} entries is recorded in chunks, not with its claim",
                entries.len()
            )));
        }
        let keys = TaskKeys::new(id);
        let args = ClaimArgs::new(waiter, submission, lease_ttl)?;
        let layout = PlanLayout::new(&keys, entries, wave, cap);
        let mut call = CLAIM_PLANNED_SCRIPT.prepare_invoke();
        call.key(keys.plan_layout().as_slice())
            .key(keys.outcome())
            .key(keys.waiters())
            .key(keys.working().as_slice())
            .key(keys.types());
        args.add_to(&mut call, submission);
        layout.add_whole(&mut call)?;
        let (status, value): (String, Vec<u8>) = call.invoke_async(&mut self.conn()).await?;
        match status.as_str() {
            "planned" => {
                let mut record = args.record(submission);
                record.state = TaskState::Planned;
                record.total = entries.len() as u64;
                record.wave_len = wave.release.len() as u64;
                record.wave_is_order = layout.wave_is_order;
                Ok(Claim::Planned {
                    lease: self.hold_lease(&keys.plan_lease(), args.token, args.ttl_ms),
                    record,
                })
            }
            "new" => Ok(Claim::New(None)),
            _ => claim_reply(&status, &value),
        }
    }

    /// Records the plan — entries, order, pending set, dependency counts and dependents, the
    /// first wave and the ready list — then moves the task to `planned` with the first wave
    /// counted in flight. Starts from scratch each time, so a crash half-way is repaired by a
    /// rerun. Every write checks that `lease` is still held and the task still `planning`, so a
    /// holder whose lease lapsed (a long pause) cannot overwrite the work of the one that took
    /// over.
    ///
    /// # Errors
    /// Redis fails, an entry does not encode, or the lease was lost or the task left the
    /// `planning` state meanwhile ([`StoreError::Fenced`]).
    pub async fn record_plan(
        &self,
        id: &str,
        lease: &Lease,
        entries: &[PlanEntry],
        wave: &FirstWave,
        cap: u32,
    ) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        let layout = PlanLayout::new(&keys, entries, wave, cap);
        let fenced = || {
            StoreError::Fenced(format!(
                "task {id}: plan lease lost or task no longer planning"
            ))
        };
        let mut conn = self.conn();
        if entries.len() <= CHUNK {
            let mut call = RECORD_PLAN_SCRIPT.prepare_invoke();
            call.key(keys.plan_layout().as_slice())
                .key(keys.working().as_slice())
                .key(keys.types())
                .arg(&lease.token);
            layout.add_whole(&mut call)?;
            let recorded: i64 = call.invoke_async(&mut conn).await?;
            return if recorded == 1 { Ok(()) } else { Err(fenced()) };
        }
        // A large plan goes in chunks, so that no single call holds Redis up for long.
        let reset: i64 = RESET_PLAN_SCRIPT
            .key(keys.plan_lease())
            .key(keys.task())
            .key(keys.working().as_slice())
            .key(keys.types())
            .arg(&lease.token)
            .invoke_async(&mut conn)
            .await?;
        if reset != 1 {
            return Err(fenced());
        }
        for (chunk_index, chunk) in entries.chunks(CHUNK).enumerate() {
            let mut call = APPEND_PLAN_SCRIPT.prepare_invoke();
            call.key(&keys.plan_layout()[..9])
                .arg(&lease.token)
                .arg(chunk_index * CHUNK);
            for entry in chunk {
                layout.add_entry(&mut call, entry)?;
            }
            let appended: i64 = call.invoke_async(&mut conn).await?;
            if appended != 1 {
                return Err(fenced());
            }
        }
        for (list, positions) in &layout.lists {
            for chunk in positions.chunks(CHUNK) {
                let mut call = APPEND_LIST_SCRIPT.prepare_invoke();
                call.key(keys.plan_lease())
                    .key(keys.task())
                    .key(list)
                    .arg(&lease.token);
                for &position in chunk {
                    call.arg(layout.id_at(position));
                }
                let appended: i64 = call.invoke_async(&mut conn).await?;
                if appended != 1 {
                    return Err(fenced());
                }
            }
        }
        let mut call = MARK_PLANNED_SCRIPT.prepare_invoke();
        call.key(keys.task())
            .key(keys.plan_lease())
            .key(keys.types())
            .arg(&lease.token);
        layout.add_fields(&mut call);
        let moved: i64 = call.invoke_async(&mut conn).await?;
        if moved == 1 {
            Ok(())
        } else {
            Err(fenced())
        }
    }

    /// First-wave entries `start..end` (positions in the wave), for resuming publication.
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
        let mut call = CLEAR_OUTBOX_SCRIPT.prepare_invoke();
        call.key(keys.outbox());
        for entry in released {
            call.arg(&entry.id);
        }
        call.invoke_async::<i64>(&mut self.conn()).await?;
        Ok(())
    }

    /// Redoes or adds `entries` for another review round and returns what is released at once.
    /// Written only while `lease` (the synthesis lease) is held.
    ///
    /// # Errors
    /// Redis fails, or the lease was lost or the task is not running ([`StoreError::Fenced`]).
    pub async fn revise(
        &self,
        id: &str,
        lease: &Lease,
        entries: &[PlanEntry],
    ) -> Result<Released, StoreError> {
        let keys = TaskKeys::new(id);
        let mut call = REVISE_SCRIPT.prepare_invoke();
        call.key(keys.graph().as_slice())
            .key(keys.synth_lease())
            .arg(&lease.token);
        for entry in entries {
            call.arg(&entry.id)
                .arg(encode_entry(entry)?)
                .arg(&entry.worker_type)
                .arg(entry.depends_on.join(" "));
        }
        let reply: Vec<redis::Value> = call.invoke_async(&mut self.conn()).await?;
        let parsed = parse_graph_reply(id, &reply)?;
        if parsed.status == "revised" {
            Ok(parsed.released)
        } else {
            Err(StoreError::Fenced(format!(
                "task {id}: synthesis lease lost before the review round was recorded"
            )))
        }
    }

    /// Worker types of `subtasks`, in that order.
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

    /// Progress per worker type, sorted by type.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn type_progress(&self, id: &str) -> Result<Vec<TypeProgress>, StoreError> {
        let keys = TaskKeys::new(id);
        let fields: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys.types())
            .query_async(&mut self.conn())
            .await?;
        let mut by_type: std::collections::BTreeMap<String, TypeProgress> =
            std::collections::BTreeMap::new();
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
        Ok(by_type.into_values().collect())
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
            .key(keys.task())
            .key(keys.starts())
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
            .key(keys.starts())
            .arg(what)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Remembers that first-wave subtasks `0..published` are confirmed by the broker.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn set_published(&self, id: &str, published: u64) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        redis::cmd("HSET")
            .arg(keys.task())
            .arg("published")
            .arg(published)
            .query_async::<()>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves a planned task to `running` once its whole plan is confirmed, and gives back the
    /// plan `lease` in the same round trip ([`Lease::release`] is then a no-op). A task that
    /// finished meanwhile stays finished.
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_running(
        &self,
        id: &str,
        published: u64,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        lease.stop.cancel();
        MARK_RUNNING_SCRIPT
            .key(keys.task())
            .key(&lease.key)
            .arg(published)
            .arg(&lease.token)
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        lease.given_back.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Records settled subtasks of one task, each once — with the subtasks they spawned — in
    /// one atomic call, and releases what that unblocks: dependents whose dependencies all
    /// succeeded (or skips them after a failure) and, under a cap, the next ready subtasks.
    /// Duplicates change nothing. With `settle_lease`, results that leave nothing pending take
    /// that lease in the same call (see [`Store::lease_run`]).
    ///
    /// # Errors
    /// Redis fails, or something does not encode or decode.
    pub async fn record_results(
        &self,
        task: &str,
        results: &[&ResultMessage],
        max_subtasks: u64,
        settle_lease: Option<&LeaseRequest<'_>>,
    ) -> Result<(Recorded, Option<SettledLease>), StoreError> {
        let keys = TaskKeys::new(task);
        let token = settle_lease.map(|_| new_lease_token());
        // Encodes like a `StoredResult`, without copying the output.
        #[derive(Serialize)]
        struct StoredResultRef<'a> {
            attempts: u32,
            outcome: &'a SubtaskOutcome,
        }
        let mut call = RECORD_RESULTS_SCRIPT.prepare_invoke();
        call.key(keys.graph().as_slice())
            .key(settle_lease.map_or_else(|| keys.synth_lease(), |lease| lease.key.to_owned()))
            .key(keys.starts())
            .arg(max_subtasks)
            .arg(results.len())
            .arg(token.as_deref().unwrap_or(""))
            .arg(settle_lease.map_or(0, |lease| lease_ttl_ms(lease.ttl)))
            .arg(settle_lease.map_or("", |lease| lease.run))
            .arg(settle_lease.map_or(0, |lease| lease.results_up_to));
        for result in results {
            let record = protocol::encode(&StoredResultRef {
                attempts: result.attempts,
                outcome: &result.outcome,
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let succeeded = matches!(result.outcome, SubtaskOutcome::Succeeded(_));
            call.arg(&result.subtask)
                .arg(record)
                .arg(if succeeded { "1" } else { "0" })
                .arg(result.attempts.saturating_sub(1))
                .arg(result.round)
                .arg(result.spawned.len());
            for entry in &result.spawned {
                call.arg(&entry.id)
                    .arg(encode_entry(entry)?)
                    .arg(&entry.worker_type)
                    .arg(entry.depends_on.join(" "));
            }
        }
        let reply: Vec<redis::Value> = call.invoke_async(&mut self.conn()).await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("script reply for {task}: {what}"));
        let lease = match (settle_lease.zip(token), reply.get(1)) {
            (Some((request, token)), Some(redis::Value::Array(leased))) => Some(
                SettledLease::Taken(Box::new(self.leased(task, request, token, leased).await?)),
            ),
            (Some(_), Some(redis::Value::Nil) | None) | (None, _) => None,
            (Some(_), Some(_)) => Some(SettledLease::Held),
        };
        let recorded = match reply.first() {
            Some(redis::Value::Array(recorded)) => read_recorded(task, results.len(), recorded),
            _ => Err(corrupt("no recorded part")),
        };
        match (recorded, lease) {
            (Ok(recorded), lease) => Ok((recorded, lease)),
            (Err(error), Some(SettledLease::Taken(leased))) => {
                if let Some(request) = settle_lease {
                    leased.give_back(task, request.run).await;
                }
                Err(error)
            }
            (Err(error), _) => Err(error),
        }
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

    /// Reads the task hash; `None` when the task is unknown (or expired).
    ///
    /// # Errors
    /// Redis fails, or the hash is not one Chorus wrote.
    pub async fn task(&self, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let keys = TaskKeys::new(id);
        let fields: std::collections::HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(keys.task())
            .query_async(&mut self.conn())
            .await?;
        task_record(id, &fields)
    }

    /// Takes the lease `request` names if nobody holds it and, in the same round trip, reads
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
        let reply: Option<Vec<redis::Value>> = LEASE_RUN_SCRIPT
            .key(request.key)
            .key(keys.task())
            .key(keys.starts())
            .key(keys.pending())
            .key(keys.order())
            .key(keys.results())
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

    /// Holds the lease a script just took for `token` and reads what came with it.
    async fn leased(
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
                lease.let_go(id).await;
                Err(error)
            }
        }
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

    /// Stores the outcome unless one is stored already, marks the task finished, sets the TTL on
    /// what is kept and drops the working state. Returns the outcome that is stored (the earlier
    /// one if there was one) with everyone it goes to.
    ///
    /// # Errors
    /// Redis fails, or what is stored does not decode.
    pub async fn store_outcome(
        &self,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<Finished, StoreError> {
        let id = &outcome.id;
        let keys = TaskKeys::new(id);
        let encoded = protocol::encode(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (stored, parent, waiters, children): (Vec<u8>, Vec<u8>, Vec<Vec<u8>>, Vec<String>) =
            STORE_OUTCOME_SCRIPT
                .key(keys.task())
                .key(keys.outcome())
                .key(keys.waiters())
                .key(keys.types())
                .key(keys.children())
                .key(keys.working().as_slice())
                .arg(encoded)
                .arg(ttl.as_secs().max(1))
                .arg(now_ms())
                .invoke_async(&mut self.conn())
                .await?;
        Ok(Finished {
            outcome: decode_outcome(&stored)?,
            waiters: decode_waiters(id, &waiters)?,
            parent: Some(parent).filter(|bytes| !bytes.is_empty()),
            children,
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
        Ok(outcome.map(|outcome| Finished {
            outcome,
            waiters,
            parent: record.and_then(|record| record.parent),
            children,
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

    /// Notes that every waiter has been sent the outcome, and gives back the synthesis `lease`
    /// the delivery ran under, if any, in the same round trip ([`Lease::release`] is then a
    /// no-op).
    ///
    /// # Errors
    /// Redis fails.
    pub async fn mark_delivered(&self, id: &str, lease: Option<&Lease>) -> Result<(), StoreError> {
        let keys = TaskKeys::new(id);
        if let Some(lease) = lease {
            lease.stop.cancel();
        }
        MARK_DELIVERED_SCRIPT
            .key(keys.task())
            .key(lease.map_or_else(|| keys.synth_lease(), |lease| lease.key.clone()))
            .arg(lease.map_or("", |lease| lease.token.as_str()))
            .invoke_async::<i64>(&mut self.conn())
            .await?;
        if let Some(lease) = lease {
            lease.given_back.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The guard of a lease just taken at `key` with `token`: renews it in the background
    /// until released or dropped; a crashed holder's lease lapses after its ttl.
    fn hold_lease(&self, key: &str, token: String, ttl_ms: u64) -> Lease {
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
        Lease {
            store: self.clone(),
            key: key.to_owned(),
            token,
            stop,
            given_back: AtomicBool::new(false),
        }
    }
}

/// A lease owner token unique across processes: a random process id and a counter. Every
/// result message asks for one (its script may settle the task), so it must not cost a call
/// into the kernel's random number generator each time.
fn new_lease_token() -> String {
    static PROCESS: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn lease_ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A held lease; [`Lease::release`] gives it back, dropping it lets it lapse.
pub struct Lease {
    store: Store,
    key: String,
    /// Owner token, checked by the scripts that write under the lease.
    token: String,
    /// Stops the renewals.
    stop: CancellationToken,
    /// Given back already, by the script of the last write made under it.
    given_back: AtomicBool,
}

impl Lease {
    /// [`Lease::release`] for a caller with nothing to do about a failure: it is logged, and
    /// the lease lapses by itself.
    pub async fn let_go(self, task: &str) {
        let key = self.key.clone();
        if let Err(error) = self.release().await {
            tracing::debug!(task, lease = %key, %error, "cannot release lease; it lapses by itself");
        }
    }

    /// Gives the lease back if it is still ours.
    ///
    /// # Errors
    /// Redis fails; the lease then lapses by itself.
    pub async fn release(self) -> Result<(), StoreError> {
        self.stop.cancel();
        if self.given_back.load(Ordering::Relaxed) {
            return Ok(());
        }
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

fn encode_entry(entry: &PlanEntry) -> Result<Vec<u8>, StoreError> {
    protocol::encode(entry).map_err(|e| StoreError::Corrupt(format!("plan entry: {e}")))
}

fn decode_entry(task: &str, bytes: &[u8]) -> Result<PlanEntry, StoreError> {
    protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("plan entry of {task}: {e}")))
}

/// A reply of the graph scripts: `{status, remaining, n, skipped × n, (id, entry) × m}`.
struct GraphReply {
    status: String,
    remaining: u64,
    skipped: Vec<String>,
    released: Released,
}

fn parse_graph_reply(task: &str, reply: &[redis::Value]) -> Result<GraphReply, StoreError> {
    use redis::FromRedisValue;
    let corrupt = |what: String| StoreError::Corrupt(format!("script reply for {task}: {what}"));
    fn read<T: FromRedisValue>(value: &redis::Value) -> Result<T, String> {
        T::from_redis_value_ref(value).map_err(|e| e.to_string())
    }
    let status: String = reply
        .first()
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("no status".into()))?;
    let remaining: u64 = reply
        .get(1)
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .unwrap_or(0);
    let count: usize = reply
        .get(2)
        .map(read)
        .transpose()
        .map_err(corrupt)?
        .unwrap_or(0);
    let skipped = reply
        .iter()
        .skip(3)
        .take(count)
        .map(read::<String>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let rest: Vec<&redis::Value> = reply.iter().skip(3 + count).collect();
    let mut released = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let [_, entry] = pair else {
            return Err(corrupt("odd release list".into()));
        };
        let bytes: Vec<u8> = read(entry).map_err(corrupt)?;
        released.push(decode_entry(task, &bytes)?);
    }
    Ok(GraphReply {
        status,
        remaining,
        skipped,
        released,
    })
}

/// What [`LEASE_RUN`] read besides the lease.
struct LeasedRead {
    runs: Option<u64>,
    pending: u64,
    record: Option<TaskRecord>,
    settled: Option<Settled>,
}

fn read_leased(id: &str, reply: &[redis::Value]) -> Result<LeasedRead, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("lease reply for {id}: {what}"));
    fn read<T: FromRedisValue>(value: Option<&redis::Value>) -> Result<T, String> {
        T::from_redis_value_ref(value.unwrap_or(&redis::Value::Nil)).map_err(|e| e.to_string())
    }
    let runs: i64 = read(reply.first()).map_err(corrupt)?;
    let pending: u64 = read(reply.get(1)).map_err(corrupt)?;
    let fields: std::collections::HashMap<String, Vec<u8>> = read(reply.get(2)).map_err(corrupt)?;
    let record = task_record(id, &fields)?;
    let settled = match (reply.get(3), reply.get(4)) {
        (Some(order), Some(results)) => {
            let order: Vec<String> = read(Some(order)).map_err(corrupt)?;
            let results: Vec<(String, Vec<u8>)> = read(Some(results)).map_err(corrupt)?;
            let results = results
                .into_iter()
                .map(|(subtask, raw)| decode_result(id, subtask, &raw))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Settled { order, results })
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

fn decode_result(
    id: &str,
    subtask: String,
    raw: &[u8],
) -> Result<(String, StoredResult), StoreError> {
    let stored: StoredResult = protocol::decode(raw)
        .map_err(|e| StoreError::Corrupt(format!("result of {id}/{subtask}: {e}")))?;
    Ok((subtask, stored))
}

/// The task record in a task hash's fields; `None` for no fields (unknown or expired task).
fn task_record(
    id: &str,
    fields: &std::collections::HashMap<String, Vec<u8>>,
) -> Result<Option<TaskRecord>, StoreError> {
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
        skipped: number("skipped"),
        round: u32::try_from(number("round")).unwrap_or(1).max(1),
        wave_is_order: text("wave_is_order").as_deref() != Some("0"),
        wave_len: number("wave_len"),
        parent: fields.get("parent").cloned(),
    }))
}

fn decode_waiters(id: &str, raw: &[Vec<u8>]) -> Result<Vec<ReplyTarget>, StoreError> {
    raw.iter()
        .map(|bytes| {
            protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("waiter of {id}: {e}")))
        })
        .collect()
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome, StoreError> {
    protocol::decode(bytes).map_err(|e| StoreError::Corrupt(format!("stored outcome: {e}")))
}

/// The part of a [`RECORD_RESULTS`] reply that says what was recorded.
fn read_recorded(
    task: &str,
    expected: usize,
    reply: &[redis::Value],
) -> Result<Recorded, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("script reply for {task}: {what}"));
    let status: String = reply
        .first()
        .map(String::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .ok_or_else(|| corrupt("no status"))?;
    match status.as_str() {
        "unknown-task" => return Ok(Recorded::UnknownTask),
        "finished" => return Ok(Recorded::TaskFinished),
        _ => {}
    }
    // `{'batch', pending, #skipped, skipped..., #results, statuses..., released...}`:
    // the graph reply's layout with the statuses spliced in after the skipped ids.
    let skipped_count = reply
        .get(2)
        .map(usize::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .unwrap_or(0);
    let statuses_at = 3 + skipped_count;
    let status_count = reply
        .get(statuses_at)
        .map(usize::from_redis_value_ref)
        .transpose()
        .map_err(|e| corrupt(&e.to_string()))?
        .unwrap_or(0);
    if status_count != expected {
        return Err(corrupt("one status per result expected"));
    }
    let statuses = reply
        .get(statuses_at + 1..statuses_at + 1 + status_count)
        .ok_or_else(|| corrupt("statuses missing"))?
        .iter()
        .map(|value| {
            let raw = String::from_redis_value_ref(value).map_err(|e| corrupt(&e.to_string()))?;
            Ok(match raw.split_once(':') {
                Some(("limit", n)) => ResultStatus::TooManySubtasks {
                    would_have: n.parse().unwrap_or(u64::MAX),
                },
                Some(("conflict", reason)) => ResultStatus::SpawnConflict {
                    reason: reason.to_owned(),
                },
                _ => match raw.as_str() {
                    "new" => ResultStatus::New,
                    "duplicate" => ResultStatus::Duplicate,
                    _ => ResultStatus::UnknownSubtask,
                },
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut graph_reply: Vec<redis::Value> = reply[..statuses_at].to_vec();
    graph_reply.extend_from_slice(&reply[statuses_at + 1 + status_count..]);
    let parsed = parse_graph_reply(task, &graph_reply)?;
    Ok(Recorded::Batch {
        statuses,
        remaining: parsed.remaining,
        released: parsed.released,
        skipped: parsed.skipped,
    })
}
