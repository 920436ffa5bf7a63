-- Prelude of the scripts that change a task's dependency graph (record_results, revise).
-- KEYS[1]: task — the task hash
-- KEYS[2]: pending — set of unsettled subtask ids
-- KEYS[3]: results — hash of subtask id to encoded result
-- KEYS[4]: plan — hash of subtask id to encoded plan entry
-- KEYS[5]: order — list of subtask ids in plan order
-- KEYS[6]: waiting — hash of subtask id to dependencies not settled yet
-- KEYS[7]: dependents — hash of subtask id to space-separated ids waiting for it
-- KEYS[8]: ready — list of ids whose dependencies succeeded, waiting for a slot
-- KEYS[9]: outbox — set of released ids whose publication is not confirmed
-- KEYS[10]: types — per worker type counters
-- KEYS[11]: done — hash of subtask id to ok, failed or skipped
-- KEYS[12]: worker-types — hash of subtask id to worker type, other than default
-- The scripts that include it may take more KEYS after these, and all ARGV.
-- Defines: the key names above, split, type_of, skipped (ids settled as skipped by this call),
-- skip_one, skip_dependents_of, satisfy_dependents_of, add_entry, reset_result, release,
-- cap_of, reply.
local TASK = KEYS[1]
local PENDING = KEYS[2]
local RESULTS = KEYS[3]
local PLAN = KEYS[4]
local ORDER = KEYS[5]
local WAITING = KEYS[6]
local DEPENDENTS = KEYS[7]
local READY = KEYS[8]
local OUTBOX = KEYS[9]
local TYPES = KEYS[10]
local DONE = KEYS[11]
local WORKER_TYPES = KEYS[12]

-- The words of a space-separated list; none for nil.
local function split(s)
  local out = {}
  if s then for w in string.gmatch(s, '%S+') do out[#out + 1] = w end end
  return out
end

local function type_of(id)
  return redis.call('HGET', WORKER_TYPES, id) or 'default'
end

local skipped = {}

-- Settles pending subtask `id` as skipped because `cause` did not succeed; false when it was
-- not pending.
local function skip_one(id, cause)
  if redis.call('SREM', PENDING, id) == 0 then return false end
  redis.call('HDEL', WAITING, id)
  redis.call('HSET', RESULTS, id, cmsgpack.pack({attempts = 0,
    outcome = {skipped = 'dependency ' .. cause .. ' did not succeed'}}))
  redis.call('HSET', DONE, id, 'skipped')
  redis.call('HINCRBY', TASK, 'skipped', 1)
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

-- `id` succeeded: its dependents with nothing else to wait for become ready.
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
  if wtype ~= 'default' then redis.call('HSET', WORKER_TYPES, id, wtype) else redis.call('HDEL', WORKER_TYPES, id) end
  if not existed then
    redis.call('RPUSH', ORDER, id)
    redis.call('HINCRBY', TASK, 'total', 1)
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
    redis.call('HSET', TASK, 'graph', 1)
  else redis.call('RPUSH', READY, id) end
end

-- Forgets the settled result of `id` so it can run again.
local function reset_result(id)
  local status = redis.call('HGET', DONE, id)
  if not status then return end
  local counter = ({ok = 'succeeded', failed = 'failed', skipped = 'skipped'})[status]
  local suffix = ({ok = ':ok', failed = ':failed', skipped = ':skipped'})[status]
  local wtype = type_of(id)
  redis.call('HINCRBY', TASK, counter, -1)
  redis.call('HINCRBY', TYPES, wtype .. suffix, -1)
  if status ~= 'skipped' then redis.call('HINCRBY', TYPES, wtype .. ':released', -1) end
  redis.call('HDEL', DONE, id)
  redis.call('HDEL', RESULTS, id)
end

-- Moves ready subtasks to the outbox while the cap allows (the in-flight count is kept only
-- under a cap; a cap of 0 is none); returns {id, entry, ...}.
local function release(cap)
  local inflight = 0
  if cap > 0 then inflight = tonumber(redis.call('HGET', TASK, 'inflight') or '0') or 0 end
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
  if cap > 0 then redis.call('HSET', TASK, 'inflight', inflight) end
  return out
end

-- The task's cap on subtasks in flight; 0 for none.
local function cap_of()
  return tonumber(redis.call('HGET', TASK, 'cap') or '0') or 0
end

-- The graph reply: {status, pending count, #skipped, skipped ids..., released id, entry, ...}.
local function reply(status, released)
  local out = {status, redis.call('SCARD', PENDING), #skipped}
  for _, id in ipairs(skipped) do out[#out + 1] = id end
  for _, v in ipairs(released) do out[#out + 1] = v end
  return out
end
