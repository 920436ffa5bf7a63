-- Moves a task whose plan was recorded in chunks to `planned`, with its first wave counted in
-- flight and released per worker type. Included after prelude/plan.lua and prelude/usage.lua.
-- KEYS[1..9]: as prelude/plan.lua binds them (plan-lease ... worker-types)
-- ARGV[1]: plan lease token
-- ARGV[2..]: the planner's usage as count_usage reads it, then the fields as planned_fields
--   reads them
-- Returns: 1 when moved, 0 when the lease is not ours or the task is not planning.
local USAGE_AT = 2

if not still_planning(ARGV[1]) then return 0 end
redis.call('HSET', TASK, unpack(planned_fields(count_usage(TASK, USAGE_AT))))
return 1
