-- Shared by every tollway script (prepended when the script is loaded).
-- Counters are integers below 2^53; '%.0f' writes them whole (tostring would use exponents).
local function fmt(n)
  return string.format('%.0f', n)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Apply `delta` to one counter: a rate's TAT (microseconds) or a window's count.
-- A window counter created here lives `retention` past now; a TAT lives until it is reached.
local function adjust(key, is_rate, delta, now, retention)
  local raw = redis.call('GET', key)
  if not raw and delta <= 0 then
    return 0
  end
  local v = tonumber(raw) or 0
  if is_rate then
    if delta > 0 and v < now then
      v = now
    end
    v = v + delta
    if v <= now then
      redis.call('DEL', key)
      return 0
    end
    redis.call('SET', key, fmt(v), 'PXAT', fmt(math.floor(v / 1000) + 1))
    return v
  end
  v = v + delta
  if v < 0 then
    v = 0
  end
  if raw then
    redis.call('SET', key, fmt(v), 'KEEPTTL')
  else
    redis.call('SET', key, fmt(v), 'PXAT', fmt(math.floor((now + retention) / 1000)))
  end
  return v
end

-- Give back every hold of the subject that expired by `now`, then re-mark the earliest.
local function sweep(prefix, holds, marker, now, retention)
  local ids = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(ids) do
    local hold = prefix .. 'h:' .. id
    local fields = redis.call('HGETALL', hold)
    for j = 1, #fields, 2 do
      local entry = fields[j + 1]
      local amount = tonumber(string.sub(entry, 2))
      adjust(prefix .. fields[j], string.sub(entry, 1, 1) == 'r', -amount, now, retention)
    end
    redis.call('DEL', hold)
    redis.call('ZREM', holds, id)
  end
  local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('SET', marker, first[2])
  else
    redis.call('DEL', marker)
  end
end
