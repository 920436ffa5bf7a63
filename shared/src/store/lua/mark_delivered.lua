-- Notes that every waiter was sent the outcome, and releases the synthesis lease the delivery
-- ran under: the last write under it.
-- KEYS[1]: task — the task hash
-- KEYS[2]: synth-lease — owner token of the synthesizing process
-- ARGV[1]: synthesis lease token (empty for none)
-- Returns: 1.
local TASK, SYNTH_LEASE = KEYS[1], KEYS[2]

if ARGV[1] ~= '' and redis.call('GET', SYNTH_LEASE) == ARGV[1] then redis.call('DEL', SYNTH_LEASE) end
redis.call('HSET', TASK, 'delivered', 1)
return 1
