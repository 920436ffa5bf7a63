-- Uncounts a run counted by begin_run, which finished (whatever its result).
-- KEYS[1]: starts — hash of runs started and not finished
-- ARGV[1]: run name
-- Returns: 0.
local STARTS = KEYS[1]

if redis.call('HEXISTS', STARTS, ARGV[1]) == 1 then
  if redis.call('HINCRBY', STARTS, ARGV[1], -1) <= 0 then redis.call('HDEL', STARTS, ARGV[1]) end
end
return 0
