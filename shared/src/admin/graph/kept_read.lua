-- Reads what the kept copy of a task's graph is built from, in one round trip: it runs just
-- before the outcome is stored, and the outcome waits on it. All keys share the task's hash
-- tag, so the script runs on one Redis Cluster slot.
-- KEYS[1]: order — list of the plan's subtask ids, in plan order
-- KEYS[2]: plan — hash of subtask id → encoded plan entry
-- KEYS[3]: results — hash of subtask id → encoded result
-- ARGV[1]: most subtasks read (from the front of the order)
-- Returns: {subtasks in the plan, the ids read, their plan entries, their results} (an entry or
--   a result missing is nil).
local ORDER, PLAN, RESULTS = KEYS[1], KEYS[2], KEYS[3]
local total = redis.call('LLEN', ORDER)
local ids = redis.call('LRANGE', ORDER, 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {total, ids, {}, {}} end
return {total, ids, redis.call('HMGET', PLAN, unpack(ids)), redis.call('HMGET', RESULTS, unpack(ids))}
