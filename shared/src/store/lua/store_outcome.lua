-- Stores a task's outcome unless one is stored already, marks the task finished, sets the
-- outcome TTL on what is kept and drops the working state. Included after prelude/usage.lua.
-- KEYS[1]: task — the task hash (kept)
-- KEYS[2]: outcome — the stored outcome
-- KEYS[3]: waiters — set of encoded reply targets (kept)
-- KEYS[4]: types — per worker type counters (kept)
-- KEYS[5]: children — set of child task ids (kept)
-- KEYS[6]: graph — the dashboard's copy of the task's graph (written with the outcome)
-- KEYS[7..]: the working keys — dropped
-- ARGV[1]: encoded outcome
-- ARGV[2]: outcome TTL, seconds
-- ARGV[3]: finished, ms since the Unix epoch
-- ARGV[4]: the graph's copy, JSON ('' when there is none: nothing is written)
-- ARGV[5..]: the usage of the steps that led to this outcome (review, synthesis, a rejected
--   plan) as count_usage reads it: counted only when this outcome is the one stored
-- Returns: {stored outcome (the earlier one if there was one), encoded parent or '', waiters,
--   children, kind or ''}.
local TASK, OUTCOME, WAITERS, TYPES, CHILDREN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local GRAPH = KEYS[6]
local FIRST_TO_DROP = 7

local existing = redis.call('GET', OUTCOME)
if not existing then
  redis.call('SET', OUTCOME, ARGV[1], 'EX', ARGV[2])
  existing = ARGV[1]
  count_usage(TASK, 5)
  -- The graph's copy belongs to the outcome stored: a repeated call leaves the first one.
  if ARGV[4] ~= '' then redis.call('SET', GRAPH, ARGV[4], 'EX', ARGV[2]) end
  redis.call('HSET', TASK, 'state', 'finished', 'finished_ms', ARGV[3])
  -- Everything kept expires together, set once: a later call must not outlive the outcome.
  for _, kept in ipairs({WAITERS, TYPES, CHILDREN}) do redis.call('EXPIRE', kept, ARGV[2]) end
  redis.call('EXPIRE', TASK, ARGV[2])
  redis.call('DEL', unpack(KEYS, FIRST_TO_DROP))
end
-- What delivery needs comes back with it; waiters read after the outcome is set miss none.
return {existing, redis.call('HGET', TASK, 'parent') or '', redis.call('SMEMBERS', WAITERS),
  redis.call('SMEMBERS', CHILDREN), redis.call('HGET', TASK, 'kind') or ''}
