-- Write a provider's health gates (see tollway/engine/health.py for what each op means).
-- KEYS: 1 the provider's hash
-- ARGV: 1 op, then:  extend: field, until (us), for (us)
--                    error:  threshold, window (us), open (us), force (1/0)
--                    floor:  field, window start, window end, hard limit, remaining
--                    close, clear: nothing
-- Reply: {now, value, errors}
local now = clock()
local key = KEYS[1]
local op = ARGV[1]
local plan = redis.call('HGET', key, 'plan')
local exp = redis.call('HGET', key, 'exp')
if op == 'extend' then
  local field = ARGV[2]
  local target = math.max(tonumber(ARGV[3]), now + tonumber(ARGV[4]))
  local old = tonumber(redis.call('HGET', key, field)) or 0
  if target > old then
    redis.call('HSET', key, field, fmt(target))
    keep_until(key, target, plan, exp)
    return {now, target, 0}
  end
  return {now, old, 0}
elseif op == 'error' then
  local threshold, window, open = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local got = redis.call('HMGET', key, 'g:breaker', 'he', 'he@')
  local breaker = tonumber(got[1]) or 0
  if ARGV[5] == '1' then
    breaker = now + open
    redis.call('HSET', key, 'g:breaker', fmt(breaker))
    redis.call('HDEL', key, 'he', 'he@')
    keep_until(key, breaker, plan, exp)
    return {now, breaker, 0}
  end
  if breaker > now then
    return {now, breaker, 0}
  end
  local count, start = tonumber(got[2]) or 0, tonumber(got[3]) or 0
  if start + window <= now then
    count, start = 0, now
  end
  count = count + 1
  if count >= threshold then
    breaker = now + open
    redis.call('HSET', key, 'g:breaker', fmt(breaker))
    redis.call('HDEL', key, 'he', 'he@')
    keep_until(key, breaker, plan, exp)
    return {now, breaker, 0}
  end
  redis.call('HSET', key, 'he', count, 'he@', fmt(start))
  keep_until(key, start + window, plan, exp)
  return {now, breaker, count}
elseif op == 'close' then
  redis.call('HDEL', key, 'g:breaker', 'he', 'he@')
  return {now, 0, 0}
elseif op == 'clear' then
  redis.call('HDEL', key, 'g:blocked', 'g:exhausted', 'g:cooldown', 'g:breaker', 'he', 'he@')
  return {now, 0, 0}
elseif op == 'floor' then
  local field = ARGV[2]
  local start, ends = tonumber(ARGV[3]), tonumber(ARGV[4])
  local hard, remaining = tonumber(ARGV[5]), tonumber(ARGV[6])
  local got = redis.call('HMGET', key, field, field .. '@')
  local v = tonumber(got[1]) or 0
  if tonumber(got[2]) ~= start then
    v = 0
  end
  if now < start or now >= ends then
    return {now, v, 0}
  end
  local floor = hard - remaining
  if floor > v then
    redis.call('HSET', key, field, fmt(floor), field .. '@', fmt(start))
    keep_until(key, ends + RETENTION, plan, exp)
    return {now, floor, 0}
  end
  return {now, v, 0}
end
return redis.error_reply('health: unknown op ' .. tostring(op))
