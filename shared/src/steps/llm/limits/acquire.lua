-- Reserves one call of a model against the limits every worker shares (docs/llm.md#limits): a
-- request from the requests-per-minute bucket, the call's estimated tokens from the
-- tokens-per-minute bucket and a slot of the in-flight cap, all or none. Buckets refill by
-- Redis's own clock, so the machines' clocks do not matter. A limit of 0 or absent is none.
-- KEYS[1]: the model's limits — hash of `rpm`, `burst`, `tpm`, `in_flight`
-- KEYS[2]: the request bucket — hash of `tokens` (fractional), `at` (last refill, ms) and `due`
--   (when a caller told to wait may take a request, ms; gone once one is taken)
-- KEYS[3]: the token bucket — hash of `tokens` (may be negative: debt) and `at`
-- KEYS[4]: the calls in flight — sorted set of call ids scored by their lease's expiry (ms)
-- ARGV[1]: the call's estimated tokens
-- ARGV[2]: the call's id
-- ARGV[3]: ms the call's slot is leased for (its timeout plus slack)
-- ARGV[4]: ms a bucket's key outlives the time it takes to fill up
-- ARGV[5]: ms to wait before asking again when every slot is taken
-- Returns: {wait, reserved}: wait 0 when reserved (reserved = the tokens taken from the
-- token bucket), else the ms until asking again may succeed (nothing taken).
local LIMITS, REQUESTS, TOKENS, IN_FLIGHT = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local MS_PER_MIN, MS_PER_S, US_PER_MS = 60000, 1000, 1000
-- Most of a request's refill kept above `burst` for a caller told to wait: below one, so never
-- more than `burst` calls start at once.
local CARRY = 0.5

local estimate, id = tonumber(ARGV[1]), ARGV[2]
local lease_ms, linger_ms, poll_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * MS_PER_S + math.floor(tonumber(time[2]) / US_PER_MS)
local limits = redis.call('HMGET', LIMITS, 'rpm', 'burst', 'tpm', 'in_flight')
local rpm, burst = tonumber(limits[1]) or 0, math.max(1, tonumber(limits[2]) or 1)
local tpm, cap = tonumber(limits[3]) or 0, tonumber(limits[4]) or 0

-- A bucket's level now: a bucket with no key is full.
local function level(bucket, per_min, size)
  local state = redis.call('HMGET', bucket, 'tokens', 'at')
  local tokens = tonumber(state[1]) or size
  local at = tonumber(state[2]) or now
  return math.min(size, tokens + math.max(0, now - at) * per_min / MS_PER_MIN)
end

-- The request bucket's level now. The refill that arrives after the moment a waiting caller was
-- told to come back (`due`) is kept above `burst` (up to CARRY): that caller is on its way, and
-- the time it takes to wake up and ask must not be lost to the cap, or callers that always wait
-- would start fewer than `rpm` a minute (docs/llm.md#limits).
local function request_level()
  local state = redis.call('HMGET', REQUESTS, 'tokens', 'at', 'due')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  local due = tonumber(state[3])
  if not due or due > now or due < at then
    return math.min(burst, tokens + math.max(0, now - at) * rpm / MS_PER_MIN)
  end
  local at_due = math.min(burst, tokens + (due - at) * rpm / MS_PER_MIN)
  return math.min(burst + CARRY, at_due + (now - due) * rpm / MS_PER_MIN)
end

local wait, requests, tokens, need = 0, 0, 0, 0
if rpm > 0 then
  requests = request_level()
  if requests < 1 then
    -- The exact moment, not the caller's rounded-up wait: the cap must not eat that either.
    local due = now + (1 - requests) * MS_PER_MIN / rpm
    wait = math.ceil(due - now)
    redis.call('HSET', REQUESTS, 'due', tostring(due))
  end
end
if tpm > 0 then
  -- A call larger than a minute's tokens goes once the bucket is full, not never.
  need = math.min(estimate, tpm)
  tokens = level(TOKENS, tpm, tpm)
  if tokens < need then wait = math.max(wait, math.ceil((need - tokens) * MS_PER_MIN / tpm)) end
end
if cap > 0 then
  -- A crashed worker's slots come back when their leases expire.
  redis.call('ZREMRANGEBYSCORE', IN_FLIGHT, '-inf', now)
  if redis.call('ZCARD', IN_FLIGHT) >= cap then wait = math.max(wait, poll_ms) end
end
if wait > 0 then return {wait, 0} end

if rpm > 0 then
  requests = requests - 1
  redis.call('HSET', REQUESTS, 'tokens', tostring(requests), 'at', now)
  redis.call('HDEL', REQUESTS, 'due')
  redis.call('PEXPIRE', REQUESTS, math.ceil(math.max(0, burst - requests) * MS_PER_MIN / rpm) + linger_ms)
end
if tpm > 0 then
  tokens = tokens - need
  redis.call('HSET', TOKENS, 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', TOKENS, math.ceil((tpm - tokens) * MS_PER_MIN / tpm) + linger_ms)
end
if cap > 0 then redis.call('ZADD', IN_FLIGHT, now + lease_ms, id) end
return {0, need}
