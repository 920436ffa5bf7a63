-- Registers a waiter for a task and creates the task if its id is new, acquiring its plan lease
-- and counting its planner run. Included after prelude/claim.lua.
-- KEYS[1]: task — the task hash
-- KEYS[2]: outcome — the stored outcome
-- KEYS[3]: waiters — set of encoded reply targets
-- KEYS[4]: plan-lease — owner token of the planning process
-- KEYS[5]: starts — hash of runs started and not finished
-- KEYS[6]: cancel — a cancel kept before the claim
-- ARGV[1]: encoded waiter (empty for none)
-- ARGV[2]: kind
-- ARGV[3]: encoded resolved options
-- ARGV[4]: encoded input
-- ARGV[5]: created, ms since the Unix epoch
-- ARGV[6]: encoded parent subtask (empty for none)
-- ARGV[7]: plan lease token
-- ARGV[8]: plan lease ttl, ms
-- ARGV[9]: fingerprint of the kind's definition the task is planned with (empty for none)
-- ARGV[10]: planner run name
-- Returns: {'finished', outcome} for a task with an outcome; {'cancelled', reason} for a task
--   cancelled before its claim (created if new); {'exists', state} for a known task; {'new', runs} for a new task with its lease acquired and `runs` planner runs counted,
--   or {'new', '-1'} when the lease is still held by an earlier task of the id.
local TASK, OUTCOME, WAITERS, PLAN_LEASE, STARTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local CANCEL = KEYS[6]

local claimed = find_claimed(TASK, OUTCOME, WAITERS, CANCEL)
if claimed then return claimed end
redis.call('HSET', TASK, 'state', 'planning', 'total', 0, 'published', 0, 'inflight', 0,
  unpack(new_task_fields()))
-- The new task's plan lease and planner run come with the claim, saving two round trips.
if not redis.call('SET', PLAN_LEASE, ARGV[7], 'NX', 'PX', ARGV[8]) then return {'new', '-1'} end
return {'new', tostring(redis.call('HINCRBY', STARTS, ARGV[10], 1))}
