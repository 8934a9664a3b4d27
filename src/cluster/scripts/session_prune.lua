-- Drops index entries of sessions whose keys expired (at most ARGV[2] per call, so a backlog
-- never blocks Redis for long). An entry whose session still lives (another instance's clock
-- ran ahead) gets its score corrected instead.
-- KEYS[1] index by start, KEYS[2] index by expiry
-- ARGV[1] now ms  ARGV[2] most entries to look at  ARGV[3] session key prefix
-- Returns how many entries were dropped.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local dropped = 0
for _, id in ipairs(due) do
  local left = redis.call('PTTL', ARGV[3] .. id)
  if left > 0 then
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + left, id)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    dropped = dropped + 1
  end
end
return dropped
