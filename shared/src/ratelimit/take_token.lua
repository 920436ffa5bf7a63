-- Takes one token from a worker type's token bucket if there is one, refilling it by Redis's
-- own clock (so the machines' clocks do not matter).
-- KEYS[1]: the bucket — hash of `tokens` (fractional) and `at` (last refill, ms)
-- ARGV[1]: rate, tokens per second
-- ARGV[2]: burst, the most tokens the bucket holds
-- ARGV[3]: ms the bucket's key outlives the time it takes to fill up
-- Returns: 0 when a token was taken; else the ms until there will be one.
local BUCKET = KEYS[1]
local MS_PER_S, US_PER_MS = 1000, 1000

local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local linger_ms = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * MS_PER_S + math.floor(tonumber(time[2]) / US_PER_MS)
local state = redis.call('HMGET', BUCKET, 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / MS_PER_S)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * MS_PER_S / rate) end
redis.call('HSET', BUCKET, 'tokens', tostring(tokens), 'at', now)
-- A bucket left alone until it is full again is the same as no bucket: its key can go then.
redis.call('PEXPIRE', BUCKET, math.ceil(burst * MS_PER_S / rate) + linger_ms)
return wait
