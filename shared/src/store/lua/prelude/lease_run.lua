-- Prelude of the scripts that acquire a lease for a run (lease_run, record_results).
-- KEYS: none read here; the including script passes its keys to lease_run by name.
-- ARGV: none read here; likewise passed as parameters.
-- Defines: lease_run(lease, task, starts, pending_set, order, results, token, ttl, run, up_to,
--   known, plan), which acquires the lease at `lease` for `token` for `ttl` ms unless it is held (then
--   returns nil), counts a run of `run` in `starts` as begin_run does (-1 for a finished or
--   unknown task), and returns {runs, pending count, the task hash's fields} — plus, for a
--   settled task with at most `up_to` results, which synthesis reads next, the plan order and
--   the results' fields as [4] and [5], and, when the caller gives the `plan` hash, the plan
--   entries of the first `up_to` ids of the order as [6]. A caller that already read the task's
--   state and pending count passes them as `known` ({state = ..., pending = ...}).
local function lease_run(lease, task, starts, pending_set, order, results, token, ttl, run, up_to,
    known, plan)
  if not redis.call('SET', lease, token, 'NX', 'PX', ttl) then return nil end
  known = known or {}
  local state = known.state or redis.call('HGET', task, 'state')
  local runs = -1
  if state and state ~= 'finished' then runs = redis.call('HINCRBY', starts, run, 1) end
  local pending = known.pending or redis.call('SCARD', pending_set)
  local reply = {runs, pending, redis.call('HGETALL', task)}
  if runs >= 0 and pending == 0 and redis.call('HLEN', results) <= tonumber(up_to) then
    reply[4] = redis.call('LRANGE', order, 0, -1)
    reply[5] = redis.call('HGETALL', results)
    -- The dashboard's copy of the graph, stored with the outcome, is built from these and
    -- needs no read of its own between the last result and the outcome.
    if plan and #reply[4] > 0 then
      reply[6] = redis.call('HMGET', plan, unpack(reply[4], 1, math.min(#reply[4], tonumber(up_to))))
    end
  end
  return reply
end
