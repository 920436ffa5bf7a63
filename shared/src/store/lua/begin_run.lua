-- Counts a run that starts (poison detection: runs that took their process down stay counted).
-- KEYS[1]: task — the task hash
-- KEYS[2]: starts — hash of runs started and not finished
-- ARGV[1]: run name (a subtask id, plan or synth)
-- Returns: the runs of that name started and not finished, this one included; -1 for a
--   finished or unknown task.
local TASK, STARTS = KEYS[1], KEYS[2]

local state = redis.call('HGET', TASK, 'state')
if not state or state == 'finished' then return -1 end
return redis.call('HINCRBY', STARTS, ARGV[1], 1)
