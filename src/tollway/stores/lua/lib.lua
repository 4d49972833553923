-- Shared by every tollway script (prepended when the script is loaded).
-- A subject's state is one hash, KEYS[1] = 'tw:{SUBJECT}'. Its fields:
--   plan                  the assigned plan (absent: the policy's default plan)
--   hx                    when the earliest reservation hold expires (us)
--   exp                   when the hash expires (us); unassigned subjects only
--   r:NAME[:OP]           a rate's theoretical arrival time (us)
--   q:NAME[:OP], b:...    a quota's or budget's count, and with '@' its window start (us)
--   c:CUR                 the live prepaid balance in CUR (micro-units); with '^' the earliest
--                         expiry of its grants, with '#' the last grant's sequence number
--   cr                    1 when the subject has had grants: its hash never expires
-- Grants live in KEY:cg:CUR (id -> "micros priority expires seq remaining"; see credits.lua).
-- Holds live beside it: KEY:holds (sorted set of ids by expiry) and KEY:h:ID (hash).
-- Counts stay below 2^53; '%.0f' writes them whole (tostring would use exponents).
-- How long a window's counter outlives its window (us); the same as the memory store's.
local RETENTION = __RETENTION__
-- Reply codes (tollway.engine.replies.ReplyCode), substituted at load time like RETENTION.
local OK, DENIED, PLAN_MISMATCH = __OK__, __DENIED__, __PLAN_MISMATCH__
local STALE_WINDOW, EXPIRED, DUPLICATE = __STALE_WINDOW__, __EXPIRED__, __DUPLICATE__
local REPEATS, CONFLICT = __REPEATS__, __CONFLICT__

local function fmt(n)
  return string.format('%.0f', n)
end

-- The expiry of what never expires (tollway.engine.credits.NEVER, 2^62).
local NEVER = '4611686018427387904'

-- Prepaid credits (tollway.engine.credits.allocate, line for line): the net drawn since the
-- last allocation (the grants' remaining less the balance) is taken from the grants in draw
-- order (priority high first, soonest expiry, oldest), or given back in reverse order never
-- above a grant's amount; grants expired at `now` are dropped; the next expiry is set.
-- Returns the live balance and the live grants in draw order ({id, m, p, e, seq, rem}).
local function credits_allocate(key, field, now)
  local gkey = key .. ':cg:' .. string.sub(field, 3)
  local raw = redis.call('HGETALL', gkey)
  local grants, total = {}, 0
  for i = 1, #raw, 2 do
    local m, p, e, q, r = string.match(raw[i + 1], '^(%d+) (%-?%d+) (%d+) (%d+) (%d+)$')
    local g = {raw[i], tonumber(m), tonumber(p), tonumber(e), tonumber(q), tonumber(r)}
    grants[#grants + 1] = g
    total = total + g[6]
  end
  table.sort(grants, function(a, b)
    if a[3] ~= b[3] then
      return a[3] > b[3]
    end
    if a[4] ~= b[4] then
      return a[4] < b[4]
    end
    return a[5] < b[5]
  end)
  local net = total - (tonumber(redis.call('HGET', key, field)) or 0)
  local changed = {}
  if net > 0 then
    for _, g in ipairs(grants) do
      local take = math.min(net, g[6])
      if take > 0 then
        g[6] = g[6] - take
        net = net - take
        changed[#changed + 1] = g
      end
      if net == 0 then
        break
      end
    end
  elseif net < 0 then
    local back = -net
    for i = #grants, 1, -1 do
      local g = grants[i]
      local give = math.min(back, g[2] - g[6])
      if give > 0 then
        g[6] = g[6] + give
        back = back - give
        changed[#changed + 1] = g
      end
      if back == 0 then
        break
      end
    end
  end
  for _, g in ipairs(changed) do
    redis.call('HSET', gkey, g[1],
      fmt(g[2]) .. ' ' .. fmt(g[3]) .. ' ' .. fmt(g[4]) .. ' ' .. fmt(g[5]) .. ' ' .. fmt(g[6]))
  end
  local live, left, nxt = {}, 0, nil
  for _, g in ipairs(grants) do
    if g[4] > now then
      live[#live + 1] = g
      left = left + g[6]
      if not nxt or g[4] < nxt then
        nxt = g[4]
      end
    else
      redis.call('HDEL', gkey, g[1])
    end
  end
  redis.call('HSET', key, field, fmt(left))
  if nxt and nxt < tonumber(NEVER) then
    redis.call('HSET', key, field .. '^', fmt(nxt))
  else
    redis.call('HDEL', key, field .. '^')
  end
  return left, live
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Make sure an unassigned subject's hash outlives `needed` (us); extend with slack so this
-- runs about once a minute, not on every step.
local function keep_until(key, needed, plan, exp)
  if plan then
    return
  end
  if needed > (tonumber(exp) or 0) then
    local at = needed + 60000000
    redis.call('HSET', key, 'exp', fmt(at))
    redis.call('PEXPIREAT', key, fmt(math.floor(at / 1000) + 1))
  end
end

-- Apply `delta` to one counter. A rate's TAT starts from `base` when it is behind it. A window
-- counter changes only while it holds the window [start, ends): a refund to a window that has
-- moved on is dropped, a late charge to a window that is still current starts it if needed.
local function adjust(key, field, is_rate, delta, start, ends, base, now, retention)
  if string.sub(field, 1, 2) == 'c:' then
    -- A prepaid balance counts down: a delta (what is consumed) is drawn as far as it goes
    -- (never below 0), a negative one given back (the next allocation puts it on the grants
    -- last drawn).
    local v = math.max(0, (tonumber(redis.call('HGET', key, field)) or 0) - delta)
    redis.call('HSET', key, field, fmt(v))
    return v
  end
  local got = redis.call('HMGET', key, field, field .. '@', 'plan', 'exp')
  if is_rate then
    if not got[1] and delta <= 0 then
      return 0
    end
    local v = tonumber(got[1]) or 0
    if delta > 0 and v < base then
      v = base
    end
    v = v + delta
    if v <= now then
      redis.call('HDEL', key, field)
      return 0
    end
    redis.call('HSET', key, field, fmt(v))
    keep_until(key, v, got[3], got[4])
    return v
  end
  local ws = tonumber(got[2])
  local v = tonumber(got[1]) or 0
  if ws ~= start then
    if delta <= 0 or now >= ends or (ws and ws > start) then
      return 0
    end
    v = 0
  end
  v = v + delta
  if v < 0 then
    v = 0
  end
  redis.call('HSET', key, field, fmt(v), field .. '@', fmt(start))
  keep_until(key, ends + retention, got[3], got[4])
  return v
end

-- Note in the subject's hash when its earliest remaining hold expires (the step reads it).
local function mark_earliest(key)
  local first = redis.call('ZRANGE', key .. ':holds', 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('HSET', key, 'hx', first[2])
  else
    redis.call('HDEL', key, 'hx')
  end
end

-- Give back every hold of the subject that expired by `now`, then re-mark the earliest.
local function sweep(key, now, retention)
  local holds = key .. ':holds'
  local ids = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(ids) do
    local hold = key .. ':h:' .. id
    local fields = redis.call('HGETALL', hold)
    for j = 1, #fields, 2 do
      local tag, amount, start, ends = string.match(fields[j + 1], '^(%a)(%d+)@(%d+)@(%d+)$')
      adjust(key, fields[j], tag == 'r', -tonumber(amount), tonumber(start), tonumber(ends),
        now, now, retention)
    end
    redis.call('DEL', hold)
    redis.call('ZREM', holds, id)
  end
  mark_earliest(key)
end
