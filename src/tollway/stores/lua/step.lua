-- The atomic step: check every rule, then consume all or nothing.
-- KEYS: 1 the subject's hash
-- ARGV: 1 rules as a JSON array, per rule:
--         rate:   kind 0 (+8 shadow), field, emission (us), capacity (us)
--         window: kind 1 units / 2 money (+8 shadow, +16 thresholds), field, hard limit,
--                 [threshold marks, with +16], start, end (us)
--       2 mode (0 acquire, 1 reserve, 2 peek), 3 expected plan ('' for none),
--       4 units, 5 micro-units of money, 6 hold id, 7 hold ttl (us), 8 retention (us)
-- Reply: {code, now, misfits, crossings, crossing..., value...}; code 0 taken, 1 denied,
--        2 plan mismatch (+ plan), 3 stale window. Values are after the step when taken, as
--        found otherwise. A crossing is rule * 64 + threshold (0-based), reported by the one
--        step that first reaches the threshold in its window (marked in field#threshold).
local now = clock()
local key = KEYS[1]
local spec = cjson.decode(ARGV[1])
local kinds, fields, pa, pb, pc, marks = {}, {}, {}, {}, {}, {}
local names = {'plan', 'hx', 'exp'}
local i, n = 1, 0
while i <= #spec do
  n = n + 1
  local kind = spec[i]
  kinds[n] = kind
  fields[n] = spec[i + 1]
  pa[n] = spec[i + 2]
  pb[n] = spec[i + 3]
  names[#names + 1] = spec[i + 1]
  if kind % 8 == 0 then
    i = i + 4
  else
    if kind >= 16 then
      marks[n] = spec[i + 3]
      kinds[n] = kind - 16
      i = i + 1
    end
    pb[n] = spec[i + 3]
    pc[n] = spec[i + 4]
    names[#names + 1] = fields[n] .. '@'
    if now < pb[n] or now >= pc[n] then
      return {3, now, 0, 0}
    end
    i = i + 5
  end
end
local found = redis.call('HMGET', key, unpack(names))
local plan = found[1]
if (plan or '') ~= ARGV[3] then
  return {2, now, 0, 0, plan or ''}
end
local retention = tonumber(ARGV[8])
if found[2] and tonumber(found[2]) <= now then
  sweep(key, now, retention)
  found = redis.call('HMGET', key, unpack(names))
end
local units, micros = tonumber(ARGV[4]), tonumber(ARGV[5])
local values, after, fresh = {}, {}, {}
local misfits, bit, denied = 0, 1, false
local pos = 4
for j = 1, n do
  local kind = kinds[j] % 8
  local v = tonumber(found[pos]) or 0
  local new, fit
  pos = pos + 1
  if kind == 0 then
    local tat = v
    if tat < now then
      tat = now
    end
    new = tat + units * pa[j]
    fit = new - now <= pb[j]
  else
    if tonumber(found[pos]) ~= pb[j] then
      v = 0
      fresh[j] = true
    end
    pos = pos + 1
    if kind == 1 then
      new = v + units
    else
      new = v + micros
    end
    fit = new <= pa[j]
  end
  values[j] = v
  if fit then
    after[j] = new
  else
    after[j] = v
    misfits = misfits + bit
    if kinds[j] < 8 then
      denied = true
    end
  end
  bit = bit * 2
end
local mode = tonumber(ARGV[2])
if mode == 2 then
  return {0, now, misfits, 0, unpack(values)}
end
if denied then
  return {1, now, misfits, 0, unpack(values)}
end
local writes, needed = {}, 0
for j = 1, n do
  if after[j] ~= values[j] or fresh[j] then
    writes[#writes + 1] = fields[j]
    writes[#writes + 1] = fmt(after[j])
    if kinds[j] % 8 == 0 then
      if after[j] > needed then
        needed = after[j]
      end
    else
      if fresh[j] then
        writes[#writes + 1] = fields[j] .. '@'
        writes[#writes + 1] = fmt(pb[j])
      end
      if pc[j] + retention > needed then
        needed = pc[j] + retention
      end
    end
  end
end
if #writes > 0 then
  redis.call('HSET', key, unpack(writes))
  keep_until(key, needed, plan, found[3])
end
if mode == 1 then
  local id = ARGV[6]
  local expires = now + tonumber(ARGV[7])
  local entries = {}
  bit = 1
  for j = 1, n do
    local kind = kinds[j] % 8
    local held = 0
    if math.floor(misfits / bit) % 2 == 0 then
      if kind == 0 then
        held = units * pa[j]
      elseif kind == 1 then
        held = units
      else
        held = micros
      end
    end
    local tag, start, ends = 'r', 0, 0
    if kind ~= 0 then
      tag, start, ends = 'w', pb[j], pc[j]
    end
    entries[#entries + 1] = fields[j]
    entries[#entries + 1] = tag .. fmt(held) .. '@' .. fmt(start) .. '@' .. fmt(ends)
    bit = bit * 2
  end
  local hold = key .. ':h:' .. id
  local holds = key .. ':holds'
  if #entries > 0 then
    redis.call('HSET', hold, unpack(entries))
    redis.call('PEXPIREAT', hold, fmt(math.floor((expires + retention) / 1000)))
  end
  redis.call('ZADD', holds, fmt(expires), id)
  redis.call('PEXPIREAT', holds, fmt(math.floor((expires + retention) / 1000)), 'GT')
  redis.call('PEXPIREAT', holds, fmt(math.floor((expires + retention) / 1000)), 'NX')
  if not found[2] or tonumber(found[2]) > expires then
    redis.call('HSET', key, 'hx', fmt(expires))
  end
  keep_until(key, expires + retention, plan, redis.call('HGET', key, 'exp'))
end
local reply = {0, now, misfits, 0}
bit = 1
for j = 1, n do
  if marks[j] and math.floor(misfits / bit) % 2 == 0 then
    for k, mark in ipairs(marks[j]) do
      if values[j] < mark and mark <= after[j] then
        local flag = fields[j] .. '#' .. (k - 1)
        if tonumber(redis.call('HGET', key, flag)) ~= pb[j] then
          redis.call('HSET', key, flag, fmt(pb[j]))
          reply[#reply + 1] = (j - 1) * 64 + k - 1
        end
      end
    end
  end
  bit = bit * 2
end
reply[4] = #reply - 4
for j = 1, n do
  reply[#reply + 1] = after[j]
end
return reply
