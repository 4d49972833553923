-- Shared by every tollway script (prepended when the script is loaded).
-- A subject's state is one hash, KEYS[1] = 'tw:{SUBJECT}'. Its fields:
--   plan                  the assigned plan (absent: the policy's default plan)
--   hx                    when the earliest reservation hold expires (us)
--   exp                   when the hash expires (us); unassigned subjects only
--   r:NAME[:OP]           a rate's theoretical arrival time (us)
--   q:NAME[:OP], b:...    a quota's or budget's count, and with '@' its window start (us)
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
