-- Acquires a lease for a run and reads what the run starts with. Included after
-- prelude/lease_run.lua.
-- KEYS[1]: the lease — plan-lease or synth-lease
-- KEYS[2]: task — the task hash
-- KEYS[3]: starts — hash of runs started and not finished
-- KEYS[4]: pending — set of unsettled subtask ids
-- KEYS[5]: order — list of subtask ids in plan order
-- KEYS[6]: results — hash of subtask id to encoded result
-- ARGV[1]: lease token
-- ARGV[2]: lease ttl, ms
-- ARGV[3]: run name
-- ARGV[4]: most results to return with the lease
-- Returns: false when the lease is held; else what lease_run returns.
local LEASE, TASK, STARTS, PENDING, ORDER, RESULTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6]

return lease_run(LEASE, TASK, STARTS, PENDING, ORDER, RESULTS, ARGV[1], ARGV[2], ARGV[3],
  ARGV[4]) or false
