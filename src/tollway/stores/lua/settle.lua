-- Settle a reservation: apply the live deltas while its hold exists, else the late deltas
-- (an expired hold was already given back, so a late commit takes the whole actual cost).
-- KEYS: 1 plan assignment (for the prefix), 2 earliest-hold marker, 3 holds, 4..n+3 counters
-- ARGV: 1 hold id, 2 retention (us), then 3 per entry: is rate (1/0), live delta, late delta
-- Reply: {code, now, 0, value...}; code 0 the hold was live, 1 it had expired.
local now = clock()
local n = #KEYS - 3
local prefix = string.sub(KEYS[1], 1, -5)
local retention = tonumber(ARGV[2])
local marker = redis.call('GET', KEYS[2])
if marker and tonumber(marker) <= now then
  sweep(prefix, KEYS[3], KEYS[2], now, retention)
end
local id = ARGV[1]
local live = redis.call('ZREM', KEYS[3], id) == 1
if live then
  redis.call('DEL', prefix .. 'h:' .. id)
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('SET', KEYS[2], first[2])
  else
    redis.call('DEL', KEYS[2])
  end
end
local values = {}
for i = 1, n do
  local b = 2 + (i - 1) * 3
  local delta = tonumber(ARGV[b + 3])
  if live then
    delta = tonumber(ARGV[b + 2])
  end
  local key = KEYS[i + 3]
  if delta ~= 0 then
    values[i] = adjust(key, ARGV[b + 1] == '1', delta, now, retention)
  else
    values[i] = tonumber(redis.call('GET', key)) or 0
  end
end
local code = 1
if live then
  code = 0
end
return {code, now, 0, unpack(values)}
