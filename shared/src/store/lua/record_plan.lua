-- A whole plan of at most CHUNK entries in one call: reset_plan, append_plan, the wave and
-- ready lists and mark_planned together, so a small task is planned in one round trip.
-- Included after prelude/plan.lua and prelude/usage.lua.
-- KEYS[1..11]: as prelude/plan.lua binds them (plan-lease ... ready)
-- KEYS[12..]: the working keys, then types — dropped before the plan is written
-- ARGV[1]: plan lease token
-- ARGV[2..]: the planner's usage as count_usage reads it (counted with the plan, so a planner
--   run whose plan is not written is not counted), the plan as write_plan reads it, then the
--   fields as planned_fields reads them
-- Returns: 1 when recorded, 0 when the lease is not ours or the task is not planning.
local FIRST_TO_CLEAR = 12
local USAGE_AT = 2

if not still_planning(ARGV[1]) then return 0 end
redis.call('DEL', unpack(KEYS, FIRST_TO_CLEAR))
redis.call('HSET', TASK, unpack(planned_fields(write_plan(count_usage(TASK, USAGE_AT)))))
return 1
