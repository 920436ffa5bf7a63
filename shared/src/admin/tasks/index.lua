-- Writes one task's entry in the index of recent tasks, then trims the index by age and count.
-- Both keys share the hash tag {tasks}, so the script runs on one Redis Cluster slot.
-- KEYS[1]: index — sorted set of task ids scored by submit time, ms since the Unix epoch
-- KEYS[2]: entries — hash of task id → JSON entry {kind, status, submitted_ms, finished_ms}
-- ARGV[1]: task id
-- ARGV[2]: kind ('' when unknown: an entry written before keeps its kind)
-- ARGV[3]: status: 'live', or the outcome's status
-- ARGV[4]: submitted ms (the score of a new entry; an entry written before keeps the earlier)
-- ARGV[5]: finished ms ('' while live)
-- ARGV[6]: now, ms since the Unix epoch
-- ARGV[7]: max age, ms: older entries are dropped
-- ARGV[8]: max count: the oldest entries past it are dropped
-- Returns: the number of entries dropped by the trim.
local INDEX, ENTRIES = KEYS[1], KEYS[2]
local id = ARGV[1]

local entry = {}
local old = redis.call('HGET', ENTRIES, id)
if old then
  local ok, decoded = pcall(cjson.decode, old)
  if ok and type(decoded) == 'table' then entry = decoded end
end
local score = redis.call('ZSCORE', INDEX, id)
-- The earliest submit time wins: the claim's write may land after the outcome's, which only
-- knows when the task finished.
if not score or tonumber(ARGV[4]) < tonumber(score) then
  score = ARGV[4]
  redis.call('ZADD', INDEX, score, id)
end
if ARGV[2] ~= '' then entry.kind = ARGV[2] end
-- A late 'live' write (a redelivered claim) never hides an outcome already indexed.
if ARGV[3] ~= 'live' or entry.status == nil then entry.status = ARGV[3] end
entry.submitted_ms = tonumber(score)
if ARGV[5] ~= '' then entry.finished_ms = tonumber(ARGV[5]) end
redis.call('HSET', ENTRIES, id, cjson.encode(entry))

-- Trimmed on write, a bounded batch each time: no sweeper needed.
local dropped = 0
local cutoff = tonumber(ARGV[6]) - tonumber(ARGV[7])
local old_ids = redis.call('ZRANGEBYSCORE', INDEX, '-inf', '(' .. cutoff, 'LIMIT', 0, 1000)
if #old_ids > 0 then
  redis.call('HDEL', ENTRIES, unpack(old_ids))
  redis.call('ZREM', INDEX, unpack(old_ids))
  dropped = dropped + #old_ids
end
local over = redis.call('ZCARD', INDEX) - tonumber(ARGV[8])
if over > 0 then
  local extra = redis.call('ZRANGE', INDEX, 0, math.min(over, 1000) - 1)
  redis.call('HDEL', ENTRIES, unpack(extra))
  redis.call('ZREM', INDEX, unpack(extra))
  dropped = dropped + #extra
end
return dropped
