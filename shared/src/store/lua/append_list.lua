-- Appends ids to the wave or the ready list of a plan being recorded in chunks, only while
-- the plan lease is ours and the task still planning.
-- KEYS[1]: plan-lease — owner token of the planning process
-- KEYS[2]: task — the task hash
-- KEYS[3]: the list, wave or ready
-- ARGV[1]: plan lease token
-- ARGV[2..]: ids to append
-- Returns: 1 when appended, 0 otherwise.
local PLAN_LEASE, TASK, LIST = KEYS[1], KEYS[2], KEYS[3]

if redis.call('GET', PLAN_LEASE) ~= ARGV[1] then return 0 end
if redis.call('HGET', TASK, 'state') ~= 'planning' then return 0 end
if #ARGV > 1 then redis.call('RPUSH', LIST, unpack(ARGV, 2)) end
return 1
