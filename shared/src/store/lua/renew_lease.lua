-- Extends a lease if it is still ours.
-- KEYS[1]: the lease — plan-lease or synth-lease
-- ARGV[1]: lease token
-- ARGV[2]: lease ttl, ms
-- Returns: 1 when renewed, 0 when it was not ours (any more).
local LEASE = KEYS[1]

if redis.call('GET', LEASE) == ARGV[1] then return redis.call('PEXPIRE', LEASE, ARGV[2]) end
return 0
