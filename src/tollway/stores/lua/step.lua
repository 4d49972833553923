-- The atomic step: check every rule, then consume all or nothing.
-- KEYS: 1 plan assignment, 2 earliest-hold marker, 3..n+2 counters, n+3 holds (sorted set)
-- ARGV: 1 mode (0 acquire, 1 reserve, 2 peek), 2 expected assignment ('' for none),
--       3 hold id, 4 hold ttl (us), 5 retention (us),
--       then 5 per rule: kind (0 rate, 1 window, +2 shadow), a, b, c, cost
--       rate: a = emission interval, b = capacity (both us); window: a = hard limit,
--       b = window start, c = window end (us).
-- Reply: {code, now, misfits, value...}; code 0 taken, 1 denied, 2 plan mismatch (+ plan),
--        3 stale window. Values are after the step when taken, as found otherwise.
local now = clock()
local n = #KEYS - 3
local found = redis.call('MGET', unpack(KEYS, 1, n + 2))
local plan = found[1] or ''
if plan ~= ARGV[2] then
  return {2, now, 0, plan}
end
for i = 1, n do
  local b = 5 + (i - 1) * 5
  if tonumber(ARGV[b + 1]) % 2 == 1 then
    if now < tonumber(ARGV[b + 3]) or now >= tonumber(ARGV[b + 4]) then
      return {3, now, 0}
    end
  end
end
local prefix = string.sub(KEYS[1], 1, -5)
local retention = tonumber(ARGV[5])
if found[2] and tonumber(found[2]) <= now then
  sweep(prefix, KEYS[n + 3], KEYS[2], now, retention)
  found = redis.call('MGET', unpack(KEYS, 1, n + 2))
end
local mode = tonumber(ARGV[1])
local values, after = {}, {}
local misfits, bit, denied = 0, 1, false
for i = 1, n do
  local b = 5 + (i - 1) * 5
  local kind = tonumber(ARGV[b + 1])
  local cost = tonumber(ARGV[b + 5])
  local v = tonumber(found[i + 2]) or 0
  local new, fit
  if kind % 2 == 0 then
    local tat = v
    if tat < now then
      tat = now
    end
    new = tat + cost * tonumber(ARGV[b + 2])
    fit = new - now <= tonumber(ARGV[b + 3])
  else
    new = v + cost
    fit = new <= tonumber(ARGV[b + 2])
  end
  values[i] = v
  if fit then
    after[i] = new
  else
    after[i] = v
    misfits = misfits + bit
    if kind < 2 then
      denied = true
    end
  end
  bit = bit * 2
end
if mode == 2 then
  return {0, now, misfits, unpack(values)}
end
if denied then
  return {1, now, misfits, unpack(values)}
end
for i = 1, n do
  if after[i] ~= values[i] then
    local b = 5 + (i - 1) * 5
    if tonumber(ARGV[b + 1]) % 2 == 0 then
      redis.call('SET', KEYS[i + 2], fmt(after[i]), 'PXAT', fmt(math.floor(after[i] / 1000) + 1))
    else
      redis.call('SET', KEYS[i + 2], fmt(after[i]), 'PXAT',
        fmt(math.floor((tonumber(ARGV[b + 4]) + retention) / 1000)))
    end
  end
end
if mode == 1 then
  local id = ARGV[3]
  local expires = now + tonumber(ARGV[4])
  local hold = prefix .. 'h:' .. id
  local fields = {}
  local plen = #prefix
  bit = 1
  for i = 1, n do
    local b = 5 + (i - 1) * 5
    local kind = tonumber(ARGV[b + 1])
    local held = 0
    if math.floor(misfits / bit) % 2 == 0 then
      held = tonumber(ARGV[b + 5])
      if kind % 2 == 0 then
        held = held * tonumber(ARGV[b + 2])
      end
    end
    local tag = 'w'
    if kind % 2 == 0 then
      tag = 'r'
    end
    fields[#fields + 1] = string.sub(KEYS[i + 2], plen + 1)
    fields[#fields + 1] = tag .. fmt(held)
    bit = bit * 2
  end
  if #fields > 0 then
    redis.call('HSET', hold, unpack(fields))
    redis.call('PEXPIREAT', hold, fmt(math.floor((expires + retention) / 1000)))
  end
  redis.call('ZADD', KEYS[n + 3], fmt(expires), id)
  if not found[2] or tonumber(found[2]) > expires then
    redis.call('SET', KEYS[2], fmt(expires))
  end
end
return {0, now, misfits, unpack(after)}
