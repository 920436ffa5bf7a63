-- Keeps a cancel of a task that is not claimed yet, for its claim to apply (prelude/claim.lua);
-- atomic with the claim, so a cancel is either kept before the claim or finds the task.
-- KEYS[1]: task — the task hash
-- KEYS[2]: outcome — the stored outcome
-- KEYS[3]: cancel — the kept cancel
-- ARGV[1]: the cancel's reason (empty for none)
-- ARGV[2]: how long it is kept, ms (the outcome TTL)
-- Returns: 1 when the cancel is kept; 0 when the task exists or has an outcome (the caller
--   stops it as a claimed task).
local TASK, OUTCOME, CANCEL = KEYS[1], KEYS[2], KEYS[3]

if redis.call('EXISTS', TASK, OUTCOME) > 0 then return 0 end
redis.call('SET', CANCEL, ARGV[1], 'PX', ARGV[2])
return 1
