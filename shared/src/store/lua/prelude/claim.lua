-- Prelude of the claim scripts (claim, claim_planned).
-- KEYS: none read here; the including script passes its keys to find_claimed by name.
-- ARGV[1]: encoded waiter to register (empty for none)
-- ARGV[2..6], ARGV[9]: the submission as claim.lua takes it (kind, options, input, created ms,
--   parent, fingerprint), written by find_claimed when a kept cancel ends a new task
-- Defines: new_task_fields(), the task hash's fields of a new submission as one list; and
--   find_claimed(task, outcome, waiters, cancel), which returns {'finished', outcome} for a task
--   with an outcome, else registers the waiter in `waiters` and returns {'cancelled', reason}
--   for a task cancelled before its claim (a kept cancel in `cancel` is moved to the task
--   hash's `cancel` field, creating the task, `planning`, if it is new), {'exists', state}
--   for a task that exists — or nil for a new id.
local function new_task_fields()
  local fields = {'kind', ARGV[2], 'options', ARGV[3], 'input', ARGV[4], 'created_ms', ARGV[5],
    'succeeded', 0, 'failed', 0, 'skipped', 0, 'retries', 0, 'round', 1}
  if ARGV[6] ~= '' then
    fields[#fields + 1] = 'parent'
    fields[#fields + 1] = ARGV[6]
  end
  if ARGV[9] ~= '' then
    fields[#fields + 1] = 'fingerprint'
    fields[#fields + 1] = ARGV[9]
  end
  return fields
end

local function find_claimed(task, outcome, waiters, cancel)
  local stored = redis.call('GET', outcome)
  if stored then return {'finished', stored} end
  if ARGV[1] ~= '' then redis.call('SADD', waiters, ARGV[1]) end
  local state = redis.call('HGET', task, 'state')
  -- A cancel kept by the synthesizer (keep_cancel.lua) is moved into the task hash, where a
  -- redelivery of this request finds it again if the caller dies before the cancel is applied.
  local kept = redis.call('GET', cancel)
  if kept then
    if not state then
      redis.call('HSET', task, 'state', 'planning', 'total', 0, 'published', 0, 'inflight', 0,
        unpack(new_task_fields()))
    end
    redis.call('HSET', task, 'cancel', kept)
    redis.call('DEL', cancel)
    return {'cancelled', kept}
  end
  if state then
    local applied = redis.call('HGET', task, 'cancel')
    if applied then return {'cancelled', applied} end
    return {'exists', state}
  end
  return nil
end
