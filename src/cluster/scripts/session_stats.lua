-- Counts every instance's sessions: total in the index by start; active = the sessions each
-- live instance says it holds (a dead instance's sessions count as inactive).
-- KEYS[1] index by start, KEYS[2] live instances (zset scored by heartbeat ms)
-- ARGV[1] now ms  ARGV[2] dead after ms  ARGV[3] key prefix of the per-instance counts
-- Returns {total, active}.
local total = redis.call('ZCARD', KEYS[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[2], tonumber(ARGV[1]) - tonumber(ARGV[2]), '+inf')
local active = 0
for _, instance in ipairs(live) do
  local n = redis.call('GET', ARGV[3] .. instance)
  if n then
    active = active + tonumber(n)
  end
end
if active > total then
  active = total
end
return {total, active}
