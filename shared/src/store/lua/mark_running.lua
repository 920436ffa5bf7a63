-- Moves a planned task to `running` once its whole plan is published, and releases the plan
-- lease: the last write under it.
-- KEYS[1]: task — the task hash
-- KEYS[2]: plan-lease — owner token of the planning process
-- ARGV[1]: subtasks published
-- ARGV[2]: plan lease token
-- Returns: 1 when moved, 0 when the task was not planned (it may have finished meanwhile).
local TASK, PLAN_LEASE = KEYS[1], KEYS[2]

if redis.call('GET', PLAN_LEASE) == ARGV[2] then redis.call('DEL', PLAN_LEASE) end
if redis.call('HGET', TASK, 'state') ~= 'planned' then return 0 end
redis.call('HSET', TASK, 'state', 'running', 'published', ARGV[1])
return 1
