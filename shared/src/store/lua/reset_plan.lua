-- Clears what an earlier, unfinished attempt recorded of a plan, before a large plan is written
-- again in chunks; only while the plan lease is ours and the task still planning.
-- KEYS[1]: plan-lease — owner token of the planning process
-- KEYS[2]: task — the task hash
-- KEYS[3..]: the working keys, then types — dropped
-- ARGV[1]: plan lease token
-- Returns: 1 when cleared, 0 when the lease is not ours or the task is not planning.
local PLAN_LEASE, TASK = KEYS[1], KEYS[2]
local FIRST_TO_CLEAR = 3

if redis.call('GET', PLAN_LEASE) ~= ARGV[1] then return 0 end
if redis.call('HGET', TASK, 'state') ~= 'planning' then return 0 end
redis.call('DEL', unpack(KEYS, FIRST_TO_CLEAR))
return 1
