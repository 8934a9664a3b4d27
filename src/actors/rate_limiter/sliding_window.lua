-- One sliding-window decision, atomically: at most ARGV[1] admitted events for this key in
-- any ARGV[2] milliseconds, across every instance that shares the key.
--
-- KEYS[1]  the key's log: a sorted set of admitted events scored by their time (ms)
-- ARGV[1]  limit (events per window, >= 1)
-- ARGV[2]  window in ms (>= 1)
-- ARGV[3]  a random nonce, so two events in the same microsecond are two members
--
-- Returns {1, 0} when the event is admitted (and logged), {0, retry_after_ms} when the log is
-- full; retry_after_ms is when the oldest logged event leaves the window (at least 1).
--
-- Time is Redis's clock (TIME), not the caller's: every instance then judges the window on
-- one clock, so skew between hosts cannot let more than the limit through. Redis 5+ replicates
-- a script's effects, not the script, so reading TIME before writing is allowed.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000

-- An event leaves the window once `window` ms have passed since it (as the local window).
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)

if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, time[1] .. '.' .. time[2] .. ':' .. ARGV[3])
  -- The whole log is out of the window by then: an idle key costs nothing.
  redis.call('PEXPIRE', key, window)
  return {1, 0}
end

local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local retry_after = math.ceil(tonumber(oldest[2]) + window - now)
if retry_after < 1 then
  retry_after = 1
end
return {0, retry_after}
