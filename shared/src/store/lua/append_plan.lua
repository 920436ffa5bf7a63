-- Appends one chunk of plan entries to a plan being recorded in chunks, only while the plan
-- lease is ours, the task still planning and the chunks before it all recorded. Included
-- after prelude/plan.lua.
-- KEYS[1..9]: as prelude/plan.lua binds them (plan-lease ... worker-types)
-- ARGV[1]: plan lease token
-- ARGV[2]: entries already in the order list (where this chunk starts)
-- ARGV[3..]: the entries, ENTRY_WIDTH values each (see prelude/plan.lua)
-- Returns: 1 when appended, 0 otherwise.
local FIRST_ENTRY = 3

if not still_planning(ARGV[1]) then return 0 end
if redis.call('LLEN', ORDER) ~= tonumber(ARGV[2]) then return 0 end
write_entries(FIRST_ENTRY, (#ARGV - FIRST_ENTRY + 1) / ENTRY_WIDTH)
return 1
