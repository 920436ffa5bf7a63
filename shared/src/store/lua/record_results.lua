-- Records the results of one task, each once, in one atomic call, and releases what they
-- unblock. A result of an earlier round than the task's is a duplicate: a redelivery of what
-- settled that round, never the result of the subtask sent back since. Included after
-- prelude/graph.lua and prelude/lease_run.lua.
-- KEYS[1..12]: as prelude/graph.lua binds them (task ... worker-types)
-- KEYS[13]: synth-lease — the lease the results that settle the task acquire
-- KEYS[14]: starts — hash of runs started and not finished
-- ARGV[1]: subtask limit of the task
-- ARGV[2]: number of results
-- ARGV[3]: lease token (empty for no lease)
-- ARGV[4]: lease ttl, ms
-- ARGV[5]: run name
-- ARGV[6]: most results to return with the lease
-- ARGV[7..]: per result RESULT_WIDTH values: subtask, encoded record, 1 succeeded / 0 failed,
--   retries, review round (0: not stated), spawned count, usage count; then per spawned entry
--   SPAWN_WIDTH values: id, encoded entry, worker type, space-separated dependencies; then per
--   usage entry USAGE_WIDTH values: model, prompt, completion, cached tokens, calls, cache
--   hits, cost ('' for none)
-- Returns: {recorded, lease}. `recorded` is {'batch', pending, #skipped, skipped...,
--   #results, status per result..., released id, entry, ...}, where a status is new,
--   duplicate, unknown-subtask, limit:<would have> or conflict:<reason> (the last two
--   recorded nothing); or {'unknown-task', 0, 0} or {'finished', 0, 0}. When a token was
--   given and these results left nothing pending, `lease` is what lease_run returns for the
--   synthesis lease, or 'held'; else false.
local SYNTH_LEASE, STARTS = KEYS[13], KEYS[14]
local FIRST_RESULT = 7
local RESULT_WIDTH = 7
local SPAWN_WIDTH = 4
local USAGE_WIDTH = 7
local USAGE_COUNTERS = {'prompt', 'completion', 'cached', 'calls', 'cache_hits'}

local limit, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local token, ttl, run, up_to = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local meta = redis.call('HMGET', TASK, 'state', 'cap', 'graph', 'round')
local state, cap, graph = meta[1], tonumber(meta[2] or '0') or 0, meta[3] == '1'
local round = tonumber(meta[4] or '1') or 1
if not state then return {{'unknown-task', 0, 0}, false} end
if state == 'finished' then
  redis.call('HINCRBY', TASK, 'duplicates', count)
  return {{'finished', 0, 0}, false}
end

local function spawn_problem(nspawn, base)
  local would_have = tonumber(redis.call('HGET', TASK, 'total')) + nspawn
  if would_have > limit then return 'limit:' .. would_have end
  local siblings = {}
  for i = 0, nspawn - 1 do
    local sid = ARGV[base + i * SPAWN_WIDTH]
    if redis.call('HEXISTS', PLAN, sid) == 1 then
      return 'conflict:spawned subtask id ' .. sid .. ' is already used in this task'
    end
    for _, dep in ipairs(split(ARGV[base + 3 + i * SPAWN_WIDTH])) do
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
-- Usage of the new results, summed per hash field and written once per call, like the counters.
local usage, tokens, cost = {}, 0, nil
local function add_usage(at, n)
  for u = 0, n - 1 do
    local base = at + u * USAGE_WIDTH
    local model = ARGV[base]
    for c, counter in ipairs(USAGE_COUNTERS) do
      local field = 'usage:' .. model .. ':' .. counter
      usage[field] = (usage[field] or 0) + tonumber(ARGV[base + c])
    end
    tokens = tokens + tonumber(ARGV[base + 1]) + tonumber(ARGV[base + 2])
    if ARGV[base + 6] ~= '' then cost = (cost or 0) + tonumber(ARGV[base + 6]) end
  end
end
local i = FIRST_RESULT
while i <= #ARGV do
  local id, record, ok = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local retried, of_round = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local nspawn, nusage = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  local base = i + RESULT_WIDTH
  local usage_at = base + nspawn * SPAWN_WIDTH
  i = usage_at + nusage * USAGE_WIDTH
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
    add_usage(usage_at, nusage)
    if cap > 0 then redis.call('HINCRBY', TASK, 'inflight', -1) end
    for s = 0, nspawn - 1 do
      local at = base + s * SPAWN_WIDTH
      add_entry(ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3])
    end
    if nspawn > 0 then
      spawned = true
      graph = redis.call('HGET', TASK, 'graph') == '1'
    end
    if graph then
      if ok then satisfy_dependents_of(id) else skip_dependents_of(id) end
    end
  end
  statuses[#statuses + 1] = status
end
-- Counters are added once per call: a batch of a thousand results is three writes, not three
-- thousand.
if succeeded > 0 then redis.call('HINCRBY', TASK, 'succeeded', succeeded) end
if failed > 0 then redis.call('HINCRBY', TASK, 'failed', failed) end
if retries > 0 then redis.call('HINCRBY', TASK, 'retries', retries) end
if duplicates > 0 then redis.call('HINCRBY', TASK, 'duplicates', duplicates) end
for counter, n in pairs(per_type) do redis.call('HINCRBY', TYPES, counter, n) end
for field, n in pairs(usage) do redis.call('HINCRBY', TASK, field, n) end
if tokens > 0 then redis.call('HINCRBY', TASK, 'tokens', tokens) end
if cost then redis.call('HINCRBYFLOAT', TASK, 'cost', cost) end
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
-- The results that settle the task acquire its synthesis lease too: one round trip less between
-- the last result and the outcome, and no gap in which the task is settled but unleased.
local lease = false
if pending == 0 and token ~= '' and (state == 'planned' or state == 'running') then
  lease = lease_run(SYNTH_LEASE, TASK, STARTS, PENDING, ORDER, RESULTS, token, ttl, run, up_to,
    {state = state, pending = 0}, PLAN) or 'held'
end
return {out, lease}
