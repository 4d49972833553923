-- Prepaid credits of one subject and currency (tollway.stores.credits_memory, line for line).
-- KEYS: 1 the subject's hash (its grants: KEYS[1]:cg:CUR, in the same slot)
-- ARGV: 1 op (grant, balance, revoke), 2 currency, 3 grant id, 4 micros, 5 priority,
--       6 expires (us), 7 the most live grants
-- Reply: {now, balance, code, old micros, old priority, old expires, revoked, then 6 per live
--        grant (balance): id, micros, priority, expires, seq, remaining}; code (grant, see
--        tollway.engine.credits): 1 added, 0 there already, 2 there with other terms (old
--        ones given), 3 too many grants, 4 expires at or before now
local now = clock()
local key = KEYS[1]
local op, cur = ARGV[1], ARGV[2]
local field = 'c:' .. cur
local gkey = key .. ':cg:' .. cur
if op ~= 'grant' and redis.call('EXISTS', key) == 0 then
  return {now, 0, 0, 0, 0, 0, 0}
end
local total, live = credits_allocate(key, field, now)
if op == 'balance' then
  local out = {now, total, 0, 0, 0, 0, 0}
  for _, g in ipairs(live) do
    out[#out + 1] = g[1]
    for k = 2, 6 do
      out[#out + 1] = fmt(g[k])
    end
  end
  return out
end
local packed = redis.call('HGET', gkey, ARGV[3])
if op == 'revoke' then
  if not packed then
    return {now, total, 0, 0, 0, 0, 0}
  end
  local rest = tonumber(string.match(packed, '(%d+)$'))
  redis.call('HDEL', gkey, ARGV[3])
  redis.call('HSET', key, field, fmt(total - rest))
  total = credits_allocate(key, field, now)
  return {now, total, 0, 0, 0, 0, fmt(rest)}
end
if packed then
  local m, p, e = string.match(packed, '^(%d+) (%-?%d+) (%d+)')
  local code = 2
  if m == ARGV[4] and p == ARGV[5] and e == ARGV[6] then
    code = 0
  end
  return {now, total, code, m, p, e, 0}
end
if tonumber(ARGV[6]) <= now then
  return {now, total, 4, 0, 0, 0, 0}
end
if #live >= tonumber(ARGV[7]) then
  return {now, total, 3, 0, 0, 0, 0}
end
local seq = redis.call('HINCRBY', key, field .. '#', 1)
redis.call('HSET', gkey, ARGV[3],
  ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. seq .. ' ' .. ARGV[4])
total = total + tonumber(ARGV[4])
redis.call('HSET', key, field, fmt(total), 'cr', '1', 'exp', NEVER)
local soonest = tonumber(redis.call('HGET', key, field .. '^'))
if tonumber(ARGV[6]) < tonumber(NEVER) and (not soonest or tonumber(ARGV[6]) < soonest) then
  redis.call('HSET', key, field .. '^', ARGV[6])
end
redis.call('PERSIST', key)
return {now, total, 1, 0, 0, 0, 0}
