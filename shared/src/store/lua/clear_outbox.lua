-- Notes that the publication of released subtasks is confirmed.
-- KEYS[1]: outbox — set of released ids whose publication is not confirmed
-- ARGV[1..]: the confirmed ids
-- Returns: 0.
local OUTBOX = KEYS[1]

for i = 1, #ARGV do redis.call('SREM', OUTBOX, ARGV[i]) end
return 0
