-- Settles a call reserved by acquire.lua: returns its in-flight slot and corrects the token
-- bucket by what the call really used (the bucket may go into debt, which later calls wait out).
-- KEYS[1]: the model's limits — hash of `rpm`, `burst`, `tpm`, `in_flight`
-- KEYS[2]: the token bucket — hash of `tokens` and `at` (last refill, ms)
-- KEYS[3]: the calls in flight — sorted set of call ids scored by their lease's expiry (ms)
-- ARGV[1]: the call's id
-- ARGV[2]: the tokens acquire.lua reserved for it
-- ARGV[3]: the tokens it used (prompt + completion, as the provider counted them)
-- ARGV[4]: ms a bucket's key outlives the time it takes to fill up
-- Returns: 0.
local LIMITS, TOKENS, IN_FLIGHT = KEYS[1], KEYS[2], KEYS[3]
local MS_PER_MIN, MS_PER_S, US_PER_MS = 60000, 1000, 1000

local id, reserved, used = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local linger_ms = tonumber(ARGV[4])
redis.call('ZREM', IN_FLIGHT, id)
local tpm = tonumber(redis.call('HGET', LIMITS, 'tpm')) or 0
if tpm <= 0 or reserved == used then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * MS_PER_S + math.floor(tonumber(time[2]) / US_PER_MS)
local state = redis.call('HMGET', TOKENS, 'tokens', 'at')
local tokens = tonumber(state[1]) or tpm
local at = tonumber(state[2]) or now
tokens = math.min(tpm, tokens + math.max(0, now - at) * tpm / MS_PER_MIN + reserved - used)
redis.call('HSET', TOKENS, 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', TOKENS, math.ceil((tpm - tokens) * MS_PER_MIN / tpm) + linger_ms)
return 0
