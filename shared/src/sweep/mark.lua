-- Notes what the sweeper sees of one task's progress and says how long it has seen none.
-- KEYS[1]: task — the task hash (its `sweep_mark` field: progress signature '|' ms first seen)
-- KEYS[2]: pending — set of unsettled subtask ids
-- ARGV[1]: now, ms since the Unix epoch
-- Returns: {state ('' for a task gone or finished), pending subtasks, ms since its progress
--   signature (state, settled and published counts, round, retries) last changed}.
local TASK, PENDING = KEYS[1], KEYS[2]

local state = redis.call('HGET', TASK, 'state')
if not state or state == 'finished' then return {'', 0, 0} end
local f = redis.call('HMGET', TASK, 'succeeded', 'failed', 'skipped', 'published', 'round',
  'retries', 'sweep_mark')
local parts = {state}
for i = 1, 6 do parts[#parts + 1] = f[i] or '0' end
local signature = table.concat(parts, ':')
local now = tonumber(ARGV[1])
local since = now
local old_signature, old_since
if f[7] then old_signature, old_since = string.match(f[7], '^(.*)|(%d+)$') end
if old_signature == signature then
  since = tonumber(old_since)
else
  redis.call('HSET', TASK, 'sweep_mark', signature .. '|' .. ARGV[1])
end
return {state, redis.call('SCARD', PENDING), now - since}
