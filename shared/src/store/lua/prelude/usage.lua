-- Prelude of the scripts that count the usage of a plan, review or synthesis step with what
-- they write under the task's lease (record_plan, claim_planned, mark_planned, revise,
-- store_outcome), so a step's paid calls count exactly once with the write they led to.
-- KEYS: none read here; the including script passes its task hash by name.
-- ARGV: read from the position given. A usage block is a count, then that many entries of
--   STEP_USAGE_WIDTH values: model, prompt, completion, cached tokens, calls, cache hits, cost
--   ('' for none) — the layout of record_results.lua's usage entries.
-- Defines: STEP_USAGE_WIDTH, skip_usage(p), which returns the position after the block at `p`,
--   and count_usage(task, p), which adds the block at `p` to the task hash `task`
--   (`usage:<model>:<counter>`, `tokens`, `cost`, as record_results.lua does) and returns the
--   position after it.
local STEP_USAGE_WIDTH = 7
local STEP_USAGE_COUNTERS = {'prompt', 'completion', 'cached', 'calls', 'cache_hits'}

local function skip_usage(p)
  return p + 1 + tonumber(ARGV[p]) * STEP_USAGE_WIDTH
end

local function count_usage(task, p)
  local tokens, cost = 0, nil
  for u = 0, tonumber(ARGV[p]) - 1 do
    local base = p + 1 + u * STEP_USAGE_WIDTH
    for c, counter in ipairs(STEP_USAGE_COUNTERS) do
      redis.call('HINCRBY', task, 'usage:' .. ARGV[base] .. ':' .. counter, ARGV[base + c])
    end
    tokens = tokens + tonumber(ARGV[base + 1]) + tonumber(ARGV[base + 2])
    if ARGV[base + 6] ~= '' then cost = (cost or 0) + tonumber(ARGV[base + 6]) end
  end
  if tokens > 0 then redis.call('HINCRBY', task, 'tokens', tokens) end
  if cost then redis.call('HINCRBYFLOAT', task, 'cost', cost) end
  return skip_usage(p)
end
