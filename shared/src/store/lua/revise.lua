-- Redoes or adds subtasks for another review round, under the synthesis lease. Included after
-- prelude/graph.lua and prelude/usage.lua.
-- KEYS[1..12]: as prelude/graph.lua binds them (task ... worker-types)
-- KEYS[13]: synth-lease — owner token of the synthesizing process
-- ARGV[1]: synthesis lease token
-- ARGV[2..]: the review's usage as count_usage reads it (counted with the round it sent back),
--   then per entry SPAWN_WIDTH values: id, encoded entry, worker type, space-separated
--   dependencies
-- Returns: the graph reply (see reply in prelude/graph.lua) with status 'revised', or
--   {'fenced', 0, 0} when the lease is not ours or the task is neither planned nor running.
local SYNTH_LEASE = KEYS[13]
local USAGE_AT = 2
local SPAWN_WIDTH = 4

if redis.call('GET', SYNTH_LEASE) ~= ARGV[1] then return {'fenced', 0, 0} end
local state = redis.call('HGET', TASK, 'state')
if state ~= 'running' and state ~= 'planned' then return {'fenced', 0, 0} end
local first_entry = count_usage(TASK, USAGE_AT)
for i = first_entry, #ARGV, SPAWN_WIDTH do reset_result(ARGV[i]) end
for i = first_entry, #ARGV, SPAWN_WIDTH do
  add_entry(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
redis.call('HINCRBY', TASK, 'round', 1)
return reply('revised', release(cap_of()))
