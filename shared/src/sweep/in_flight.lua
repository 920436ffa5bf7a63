-- The pending subtasks of a task that were released (published, or due to be): not waiting
-- for a dependency, nor for a slot under the task's concurrency cap. The sweeper's candidates
-- for a lost message.
-- KEYS[1]: pending — set of unsettled subtask ids
-- KEYS[2]: waiting — hash of subtask id → unmet dependencies
-- KEYS[3]: ready — list of subtasks released once a slot frees
-- ARGV[1]: most ids returned
-- Returns: the ids.
local PENDING, WAITING, READY = KEYS[1], KEYS[2], KEYS[3]
local limit = tonumber(ARGV[1])
local queued = {}
for _, id in ipairs(redis.call('LRANGE', READY, 0, -1)) do queued[id] = true end
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', PENDING)) do
  if #found >= limit then break end
  if not queued[id] and redis.call('HEXISTS', WAITING, id) == 0 then
    found[#found + 1] = id
  end
end
return found
