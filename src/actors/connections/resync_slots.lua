-- Makes Redis hold exactly this instance's slots for the given users: adds the ones a claim
-- missed (Redis was down), removes the ones a release missed, and renews the sets' expiry.
-- Slots of other instances are left alone.
--
-- KEYS[1]     each instance's current incarnation (a hash instance -> incarnation)
-- KEYS[2..]   the users' slot sets
-- ARGV[1]     this instance
-- ARGV[2]     this instance's incarnation
-- ARGV[3]     how long (ms) a set lives without a claim or a resync
-- ARGV[4..]   per user (in KEYS order): the number of its connection ids here, then the ids
--
-- Returns the number of slots added plus removed.

local me, mine, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('HSET', KEYS[1], me, mine)

local ours = me .. '|' .. mine .. '|'
local changed = 0
local at = 4
for k = 2, #KEYS do
  local key = KEYS[k]
  local wanted = {}
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    wanted[ours .. ARGV[at]] = true
    at = at + 1
  end
  for _, member in ipairs(redis.call('SMEMBERS', key)) do
    if string.sub(member, 1, #ours) == ours then
      if wanted[member] then
        wanted[member] = nil
      else
        redis.call('SREM', key, member)
        changed = changed + 1
      end
    end
  end
  for member in pairs(wanted) do
    redis.call('SADD', key, member)
    changed = changed + 1
  end
  if redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, ttl)
  end
end
return changed
