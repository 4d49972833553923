-- Replay consumption journaled while the store was unreachable, once per event id.
-- KEYS: 1 the subject's hash, 2 the event's replay marker, 3 the event stream (with an event)
-- ARGV: 1 marker ttl (ms), 2 retention (us), 3 when it happened (us), 4 the step's usage
--       template ('' for none), 5 its event id, 6 its attributes (JSON or ''), 7 how long
--       the caller's request id is remembered (ms; 0: the id is not the caller's),
--       then 5 per counter: field, is rate (1/0), amount, window start, window end
-- Reply: 1 applied, 0 already applied.
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
local now = clock()
local retention = tonumber(ARGV[2])
local at = tonumber(ARGV[3])
local count = (#ARGV - 7) / 5
for j = 1, count do
  local b = 7 + (j - 1) * 5
  local amount = tonumber(ARGV[b + 3])
  if amount > 0 then
    adjust(KEYS[1], ARGV[b + 1], ARGV[b + 2] == '1', amount, tonumber(ARGV[b + 4]),
      tonumber(ARGV[b + 5]), at, now, retention)
  end
end
if ARGV[7] ~= '0' then
  -- The caller's request id was taken while the store was away: a retry of it is a duplicate.
  redis.call('SET', KEYS[1] .. ':id:' .. ARGV[5], '1', 'PX', ARGV[7])
  if ARGV[4] ~= '' then
    -- And its scoped record (step.lua), from the template: its operation, cost and amount.
    local d = cjson.decode(ARGV[4])
    local fp = fmt(d[4]) .. '/'
    if type(d[5]) == 'number' then
      fp = fp .. fmt(d[5])
    end
    local rq = KEYS[1] .. ':rq:' .. string.len(d[2]) .. ':' .. d[2] .. ':' .. ARGV[5]
    redis.call('HSET', rq, 'f', fp, 'n', 0)
    redis.call('PEXPIRE', rq, ARGV[7])
  end
end
if ARGV[4] ~= '' then
  -- The usage event of a step let through while the store was away, at when it happened.
  if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[3], '*', 'k', 'u', 't', ARGV[3], 'd', ARGV[4], 'i', ARGV[5],
      'a', ARGV[6])
  else
    redis.call('XADD', KEYS[3], '*', 'k', 'u', 't', ARGV[3], 'd', ARGV[4], 'i', ARGV[5])
  end
end
return 1
