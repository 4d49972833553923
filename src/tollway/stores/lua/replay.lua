-- Replay consumption journaled while the store was unreachable, once per event id.
-- KEYS: 1 the event's replay marker, 2..n+1 counters
-- ARGV: 1 marker ttl (ms), 2 retention (us), 3 when it happened (us),
--       then 3 per counter: is rate (1/0), amount (us of TAT, or units), window end (us)
-- Reply: 1 applied, 0 already applied.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local now = clock()
local at = tonumber(ARGV[3])
local retention = tonumber(ARGV[2])
for i = 2, #KEYS do
  local b = 3 + (i - 2) * 3
  local amount = tonumber(ARGV[b + 2])
  if ARGV[b + 1] == '1' then
    local v = tonumber(redis.call('GET', KEYS[i])) or 0
    if v < at then
      v = at
    end
    v = v + amount
    if v > now then
      redis.call('SET', KEYS[i], fmt(v), 'PXAT', fmt(math.floor(v / 1000) + 1))
    end
  else
    local ends = tonumber(ARGV[b + 3]) + retention
    if ends > now then
      local v = redis.call('INCRBY', KEYS[i], amount)
      if v == amount then
        redis.call('PEXPIREAT', KEYS[i], fmt(math.floor(ends / 1000)))
      end
    end
  end
end
return 1
