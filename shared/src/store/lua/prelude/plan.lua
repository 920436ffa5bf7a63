-- Prelude of the scripts that record plan entries or check the plan lease while planning
-- (append_plan, record_plan, claim_planned, mark_planned).
-- KEYS[1]: plan-lease — owner token of the planning process
-- KEYS[2]: task — the task hash
-- KEYS[3]: plan — hash of subtask id to encoded plan entry
-- KEYS[4]: order — list of subtask ids in plan order
-- KEYS[5]: pending — set of unsettled subtask ids
-- KEYS[6]: waiting — hash of subtask id to unmet dependency count
-- KEYS[7]: dependents — hash of subtask id to space-separated ids waiting for it
-- KEYS[8]: types — per worker type counters
-- KEYS[9]: worker-types — hash of subtask id to worker type, other than default
-- KEYS[10]: wave — first-wave ids, when not the whole order (not passed to append_plan or
--   mark_planned)
-- KEYS[11]: ready — ids whose dependencies are met, waiting for a slot (not passed to
--   append_plan or mark_planned)
-- The scripts that include it may take more KEYS after these.
-- ARGV: read from the position each function is given. An entry is ENTRY_WIDTH values: id,
--   encoded entry, worker type, unmet dependency count, space-separated dependents.
-- Defines: the key names above, ENTRY_WIDTH, still_planning, call_with_all, write_entries,
--   write_plan, planned_fields.
local PLAN_LEASE = KEYS[1]
local TASK = KEYS[2]
local PLAN = KEYS[3]
local ORDER = KEYS[4]
local PENDING = KEYS[5]
local WAITING = KEYS[6]
local DEPENDENTS = KEYS[7]
local TYPES = KEYS[8]
local WORKER_TYPES = KEYS[9]
local WAVE = KEYS[10]
local READY = KEYS[11]

-- ARGV values per plan entry.
local ENTRY_WIDTH = 5
-- Values sent per command by call_with_all: well inside Lua's stack (unpack fails past about
-- 8000), and even, so field-value pairs stay together.
local SLICE = 4000
-- The task's fields once planned that planned_fields reads before the per-type pairs.
local PLANNED_VALUES = 5

-- Whether the plan lease is held with `token` and the task is still planning: every write of
-- a plan checks both, so a holder whose lease lapsed cannot overwrite its successor's work.
local function still_planning(token)
  return redis.call('GET', PLAN_LEASE) == token and redis.call('HGET', TASK, 'state') == 'planning'
end

-- Calls `command` on `key` with `values` appended, in slices of SLICE. One call per slice, not
-- per value: a command inside a script costs several microseconds whatever its size.
local function call_with_all(command, key, values)
  for i = 1, #values, SLICE do
    redis.call(command, key, unpack(values, i, math.min(i + SLICE - 1, #values)))
  end
end

-- `count` plan entries from ARGV at `p`, ENTRY_WIDTH values each: id, encoded entry, worker
-- type, unmet dependency count, space-separated dependents. Returns the position after them.
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
    p = p + ENTRY_WIDTH
  end
  call_with_all('HSET', PLAN, plan)
  call_with_all('RPUSH', ORDER, order)
  call_with_all('SADD', PENDING, order)
  for wtype, n in pairs(per_type) do redis.call('HINCRBY', TYPES, wtype, n) end
  call_with_all('HSET', WORKER_TYPES, typed)
  call_with_all('HSET', WAITING, waiting)
  call_with_all('HSET', DEPENDENTS, dependents)
  return p
end

-- A whole plan from ARGV at `p`: the entry count, ENTRY_WIDTH values per entry, then the wave
-- and the ready list, each a count and ids. Returns the position after it.
local function write_plan(p)
  p = write_entries(p + 1, tonumber(ARGV[p]))
  for _, list in ipairs({WAVE, READY}) do
    local n = tonumber(ARGV[p])
    call_with_all('RPUSH', list, {unpack(ARGV, p + 1, p + n)})
    p = p + 1 + n
  end
  return p
end

-- The task's fields once planned, from ARGV at `p`: PLANNED_VALUES values (total, cap, wave
-- length, whether the wave is the order, whether there is a graph); the (worker type, released)
-- pairs after them, to the end of ARGV, are counted as released. Returns the fields as HSET
-- takes them.
local function planned_fields(p)
  for i = p + PLANNED_VALUES, #ARGV, 2 do
    redis.call('HINCRBY', TYPES, ARGV[i] .. ':released', ARGV[i + 1])
  end
  return {'state', 'planned', 'total', ARGV[p], 'published', 0, 'cap', ARGV[p + 1],
    'inflight', ARGV[p + 2], 'wave_len', ARGV[p + 2], 'wave_is_order', ARGV[p + 3],
    'graph', ARGV[p + 4]}
end
