-- Claims one of a user's cluster-wide socket slots, atomically: admitted unless the user's
-- live slots, on every instance together, already reach the cap.
--
-- KEYS[1]  the user's slots: a set of "<instance>|<incarnation>|<conn_id>"
-- KEYS[2]  the live instances: Membership's sorted set, scored by last heartbeat (ms)
-- KEYS[3]  each instance's current incarnation (a hash instance -> incarnation)
-- ARGV[1]  cap
-- ARGV[2]  this instance
-- ARGV[3]  this instance's incarnation (random per process)
-- ARGV[4]  the connection id to claim
-- ARGV[5]  now, ms since the epoch (the clock the heartbeats are written with)
-- ARGV[6]  after how many ms without a heartbeat an instance is dead
-- ARGV[7]  how long (ms) the set lives without a claim or a resync
--
-- Returns {1, slots} when claimed (slots includes the new one), {0, slots} when full.
--
-- A slot counts only while its instance is live (heartbeat within ARGV[6]) and still the
-- same process (incarnation): a killed instance's slots, or those of an earlier process
-- under the same instance id, stop counting and are removed as they are met.

local cap = tonumber(ARGV[1])
local me, mine = ARGV[2], ARGV[3]
local live_after = tonumber(ARGV[5]) - tonumber(ARGV[6])

redis.call('HSET', KEYS[3], me, mine)

local incarnation_of = {}
local function live(instance, incarnation)
  if instance == me then
    return incarnation == mine
  end
  local current = incarnation_of[instance]
  if current == nil then
    local seen = redis.call('ZSCORE', KEYS[2], instance)
    if seen and tonumber(seen) > live_after then
      current = redis.call('HGET', KEYS[3], instance)
    else
      -- Dead: its slots go below; a live instance writes its incarnation back on its next
      -- claim or resync.
      redis.call('HDEL', KEYS[3], instance)
      current = false
    end
    incarnation_of[instance] = current
  end
  return current == incarnation
end

local slots = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local instance, incarnation = string.match(member, '^(.*)|([^|]*)|[^|]*$')
  if instance and live(instance, incarnation) then
    slots = slots + 1
  else
    redis.call('SREM', KEYS[1], member)
  end
end

if slots >= cap then
  return {0, slots}
end
redis.call('SADD', KEYS[1], me .. '|' .. mine .. '|' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return {1, slots + 1}
