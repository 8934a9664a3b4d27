-- Ends a session for good (an admin), unless a live other instance holds it: then that
-- instance is asked to (it closes the socket) and calls this with force.
-- KEYS[1] session hash, KEYS[2] its history list, KEYS[3] live instances, KEYS[4] index by
-- start, KEYS[5] index by expiry
-- ARGV[1] this instance  ARGV[2] now ms  ARGV[3] dead after ms  ARGV[4] "1" = even if held
-- ARGV[5] ttl ms         ARGV[6] session id
-- Returns {"missing"} | {"held", instance} |
-- {"ended", user, started_at, ended_at, messages, response_ms}
local f = redis.call('HMGET', KEYS[1], 'writer', 'holder', 'user', 'started_at', 'ended_at',
  'messages', 'response_ms')
local writer, holder = f[1], f[2]
if not writer or writer == '' then
  return {'missing'}
end
if holder and holder ~= '' and holder ~= ARGV[1] and ARGV[4] ~= '1' then
  local seen = redis.call('ZSCORE', KEYS[3], holder)
  if seen and tonumber(seen) >= tonumber(ARGV[2]) - tonumber(ARGV[3]) then
    return {'held', holder}
  end
end
-- A tombstone for the TTL: a claim finds it ended, its holder's next write finds it lost.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'writer', '')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('ZREM', KEYS[4], ARGV[6])
redis.call('ZREM', KEYS[5], ARGV[6])
local out = {'ended'}
for i = 3, 7 do
  out[#out + 1] = f[i] or ''
end
return out
