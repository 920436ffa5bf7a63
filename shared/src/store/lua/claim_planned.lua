-- A new task claimed with its plan already made, in one call: claim and record_plan together,
-- for a first delivery planned before its claim (its planner run returned, so nothing is
-- counted). Included after prelude/plan.lua, prelude/claim.lua and prelude/usage.lua.
-- KEYS[1..11]: as prelude/plan.lua binds them (plan-lease ... ready)
-- KEYS[12]: outcome — the stored outcome
-- KEYS[13]: waiters — set of encoded reply targets
-- KEYS[14]: cancel — a cancel kept before the claim
-- KEYS[15..]: the working keys, then types — left over only if the task was removed by hand;
--   dropped before the plan is written
-- ARGV[1]: encoded waiter (empty for none)
-- ARGV[2]: kind
-- ARGV[3]: encoded resolved options
-- ARGV[4]: encoded input
-- ARGV[5]: created, ms since the Unix epoch
-- ARGV[6]: encoded parent subtask (empty for none)
-- ARGV[7]: plan lease token
-- ARGV[8]: plan lease ttl, ms
-- ARGV[9]: fingerprint of the kind's definition the task is planned with (empty for none)
-- ARGV[10..]: the planner's usage as count_usage reads it (counted only when the plan is
--   written), the plan as write_plan reads it, then the fields as planned_fields reads them
-- Returns: as claim.lua, except {'planned', ''} for a task claimed and planned with its plan
--   lease held; when that lease is held by an earlier task of the id, the task is claimed
--   unplanned ({'new', '-1'}).
local OUTCOME, WAITERS, CANCEL = KEYS[12], KEYS[13], KEYS[14]
local FIRST_TO_CLEAR = 15
local USAGE_AT = 10

local claimed = find_claimed(TASK, OUTCOME, WAITERS, CANCEL)
if claimed then return claimed end
local fields = new_task_fields()
if not redis.call('SET', PLAN_LEASE, ARGV[7], 'NX', 'PX', ARGV[8]) then
  redis.call('HSET', TASK, 'state', 'planning', 'total', 0, 'published', 0, 'inflight', 0,
    unpack(fields))
  return {'new', '-1'}
end
-- Working keys outlive their task only if something removed it by hand; one check, not a
-- delete per key, on the common path.
if redis.call('EXISTS', unpack(KEYS, FIRST_TO_CLEAR)) > 0 then
  redis.call('DEL', unpack(KEYS, FIRST_TO_CLEAR))
end
local planned = planned_fields(write_plan(count_usage(TASK, USAGE_AT)))
for _, v in ipairs(fields) do planned[#planned + 1] = v end
redis.call('HSET', TASK, unpack(planned))
return {'planned', ''}
