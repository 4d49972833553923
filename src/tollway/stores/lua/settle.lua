-- Settle a reservation: apply the live deltas while its hold exists, else the late deltas
-- (an expired hold was already given back, so a late commit takes the whole actual cost).
-- KEYS: 1 the subject's hash, 2 the event stream (with an event)
-- ARGV: 1 hold id, 2 retention (us), 3 the usage template of the event to append ('' for
--       none: a release), 4 its id, 5 its attributes (JSON or ''), 6 how long a caller's
--       request id is remembered (ms; 0: the id is not the caller's), then 6 per entry:
--       field, is rate (1/0), live delta, late delta, window start, window end (0 for a rate)
-- Reply: {code, now, 0, 0, value...}; code OK the hold was live, DENIED it had expired.
local now = clock()
local key = KEYS[1]
local retention = tonumber(ARGV[2])
local marker = redis.call('HGET', key, 'hx')
if marker and tonumber(marker) <= now then
  sweep(key, now, retention)
end
local id = ARGV[1]
local holds = key .. ':holds'
local live = redis.call('ZREM', holds, id) == 1
if live then
  redis.call('DEL', key .. ':h:' .. id)
  mark_earliest(key)
end
local values = {}
local count = (#ARGV - 6) / 6
for j = 1, count do
  local b = 6 + (j - 1) * 6
  local field = ARGV[b + 1]
  local is_rate = ARGV[b + 2] == '1'
  local delta = tonumber(ARGV[b + 4])
  if live then
    delta = tonumber(ARGV[b + 3])
  end
  local start, ends = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  if delta ~= 0 then
    values[j] = adjust(key, field, is_rate, delta, start, ends, now, now, retention)
  else
    local got = redis.call('HMGET', key, field, field .. '@')
    values[j] = 0
    if is_rate or tonumber(got[2]) == start or string.sub(field, 1, 2) == 'c:' then
      values[j] = tonumber(got[1]) or 0
    end
  end
end
if ARGV[3] ~= '' then
  local event_id = ARGV[4]
  if ARGV[6] ~= '0' then
    -- A caller's id already taken (another reservation, an acquire): this consumption is
    -- another event, so it keeps an id of its own and the ledger counts it too.
    if not redis.call('SET', key .. ':id:' .. event_id, '1', 'NX', 'PX', ARGV[6]) then
      event_id = event_id .. '~' .. id
    end
  end
  if ARGV[5] ~= '' then
    redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', ARGV[3], 'i', event_id,
      'a', ARGV[5])
  else
    redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', ARGV[3], 'i', event_id)
  end
end
local code = DENIED
if live then
  code = OK
end
return {code, now, 0, 0, unpack(values)}
