-- Prelude of the claim scripts (claim, claim_planned).
-- KEYS: none read here; the including script passes its keys to find_claimed by name.
-- ARGV[1]: encoded waiter to register (empty for none)
-- Defines: find_claimed(task, outcome, waiters), which returns {'finished', outcome} for a task
--   with an outcome, else registers the waiter in `waiters` and returns {'exists', state} for
--   a task that exists — or nil for a new id.
local function find_claimed(task, outcome, waiters)
  local stored = redis.call('GET', outcome)
  if stored then return {'finished', stored} end
  if ARGV[1] ~= '' then redis.call('SADD', waiters, ARGV[1]) end
  local state = redis.call('HGET', task, 'state')
  if state then return {'exists', state} end
  return nil
end
