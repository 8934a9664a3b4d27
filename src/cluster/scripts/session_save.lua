-- Writes one session's changes, from the instance that holds it (the only writer).
-- KEYS[1] session hash, KEYS[2] its history list, KEYS[3] index by start, KEYS[4] index by expiry
-- ARGV[1] writer (this instance)    ARGV[2] session id        ARGV[3] ttl ms
-- ARGV[4] now ms                     ARGV[5] "1" = whole history follows, "0" = an append
-- ARGV[6] oldest messages to drop    ARGV[7] user              ARGV[8] started_at ms
-- ARGV[9] ended_at ms or ""          ARGV[10] messages         ARGV[11] "1" = attached here
-- ARGV[12] system message or ""     ARGV[13] open tool call ids (JSON)
-- ARGV[14] response times (JSON)     ARGV[15..] history messages to append (JSON each)
-- Returns "saved"; "missing" when an append finds no session (the caller writes it whole);
-- "lost" when another instance claimed it since or an admin ended it (writer changed).
local writer = redis.call('HGET', KEYS[1], 'writer')
local full = ARGV[5] == '1'
if not writer then
  if not full then
    return 'missing'
  end
elseif writer ~= ARGV[1] then
  return 'lost'
end
if full then
  redis.call('DEL', KEYS[2])
end
for i = 15, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
local drop = tonumber(ARGV[6])
if drop > 0 then
  redis.call('LTRIM', KEYS[2], drop, -1)
end
local holder = ''
if ARGV[11] == '1' then
  holder = ARGV[1]
end
redis.call('HSET', KEYS[1],
  'writer', ARGV[1], 'holder', holder, 'user', ARGV[7], 'started_at', ARGV[8],
  'ended_at', ARGV[9], 'messages', ARGV[10], 'system', ARGV[12],
  'open_calls', ARGV[13], 'response_ms', ARGV[14])
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], tonumber(ARGV[8]), ARGV[2])
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + ttl, ARGV[2])
return 'saved'
