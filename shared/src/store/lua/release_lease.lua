-- Releases a lease if it is still ours.
-- KEYS[1]: the lease — plan-lease or synth-lease
-- ARGV[1]: lease token
-- Returns: 1 when released, 0 when it was not ours (any more).
local LEASE = KEYS[1]

if redis.call('GET', LEASE) == ARGV[1] then return redis.call('DEL', LEASE) end
return 0
