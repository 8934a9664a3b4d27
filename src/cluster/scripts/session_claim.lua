-- Takes a session for the instance resuming it, unless a live other instance holds it.
-- KEYS[1] session hash, KEYS[2] its history list, KEYS[3] live instances (zset scored by
-- heartbeat ms), KEYS[4] index by expiry
-- ARGV[1] claimant (this instance)  ARGV[2] user   ARGV[3] now ms   ARGV[4] dead after ms
-- ARGV[5] "1" = claim even if held  ARGV[6] ttl ms ARGV[7] session id
-- Returns {"missing"} | {"ended"} | {"held", instance} |
-- {"claimed", previous writer, {started_at, messages, system, open_calls, response_ms}, history}
local f = redis.call('HMGET', KEYS[1], 'writer', 'user', 'holder')
local writer, user, holder = f[1], f[2], f[3]
if not writer then
  return {'missing'}
end
if writer == '' then
  return {'ended'}
end
if user ~= ARGV[2] then
  return {'missing'}
end
if holder and holder ~= '' and holder ~= ARGV[1] and ARGV[5] ~= '1' then
  -- A holder whose heartbeat stopped is dead: its sessions count as detached.
  local seen = redis.call('ZSCORE', KEYS[3], holder)
  if seen and tonumber(seen) >= tonumber(ARGV[3]) - tonumber(ARGV[4]) then
    return {'held', holder}
  end
end
redis.call('HSET', KEYS[1], 'writer', ARGV[1], 'holder', ARGV[1], 'ended_at', '')
local ttl = tonumber(ARGV[6])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) + ttl, ARGV[7])
local data = redis.call('HMGET', KEYS[1], 'started_at', 'messages', 'system', 'open_calls',
  'response_ms')
for i = 1, 5 do
  if not data[i] then
    data[i] = ''
  end
end
return {'claimed', writer, data, redis.call('LRANGE', KEYS[2], 0, -1)}
