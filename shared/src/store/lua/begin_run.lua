-- Counts a run that starts (poison detection: runs that took their process down stay counted).
-- KEYS[1]: starts — hash of runs started and not finished
-- ARGV[1]: run name (a subtask id, plan or synth)
-- ARGV[2]: the name of the task hash (TaskKeys), only read. Not in KEYS: Redis's ACL takes
--   every key an EVALSHA declares as read-write, and a worker's Redis user may only read the
--   task hash (docs/security.md#redis-acl-users). Same task, so same hash slot as KEYS[1].
-- Returns: the runs of that name started and not finished, this one included; -1 for a
--   finished or unknown task.
local STARTS, TASK = KEYS[1], ARGV[2]

local state = redis.call('HGET', TASK, 'state')
if not state or state == 'finished' then return -1 end
return redis.call('HINCRBY', STARTS, ARGV[1], 1)
