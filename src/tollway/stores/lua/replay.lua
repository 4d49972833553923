-- Resolve one journal entry, once per entry id: count a step let through while the store was
-- unreachable; or resolve a step in doubt (its reply was lost): if its caller was let through,
-- count it unless this store applied it; if its caller was refused, give it back if it did.
-- KEYS: 1 the subject's hash, 2 the entry's replay marker, 3 the event stream (with an event)
-- ARGV: 1 marker ttl (ms), 2 retention (us), 3 when it happened (us), 4 the step's usage
--       template ('' for none; for a give-back, the correction's), 5 its event id, 6 its
--       attributes (JSON or ''), 7 how long the caller's request id is remembered (ms; 0: the
--       id is not the caller's), 8 how many counters, then 5 per counter: field, is rate (1/0),
--       amount, window start, window end; then the step's identity ('' and 0 when it was
--       never sent): process, sequence number, deadline (us), and 1 to give back, else 0
-- Reply: 1 applied (or given back), 0 nothing to do (done before, or Redis applied the step
--        already, or never applied what is to be given back), -N: the step's deadline is N us
--        away; until then it may still be applied (it waited in a buffer): ask again after.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local now = clock()
local retention = tonumber(ARGV[2])
local at = tonumber(ARGV[3])
local count = tonumber(ARGV[8])
local tail = 8 + count * 5
local process, seq = ARGV[tail + 1], ARGV[tail + 2]
local undo = ARGV[tail + 4] == '1'
local applied, misfits = false, 0
if process ~= '' then
  local deadline = tonumber(ARGV[tail + 3])
  if now <= deadline then
    return -(deadline - now + 1)
  end
  -- What the step script recorded for this process (see step.lua): is the step there?
  local field = 's:' .. process
  local record = redis.call('HGET', KEYS[1], field)
  if record then
    local kept = {}
    for token in string.gmatch(record, '%S+') do
      local q, mask = string.match(token, '^(%d+)/?(%d*)$')
      if q == seq then
        applied, misfits = true, tonumber(mask) or 0
      else
        kept[#kept + 1] = token
      end
    end
    if applied and #kept == 0 then
      redis.call('HDEL', KEYS[1], field)
    elseif applied then
      redis.call('HSET', KEYS[1], field, table.concat(kept, ' '))
    end
  end
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
if applied ~= undo then
  return 0
end
-- The caller's scoped record (step.lua), named from the template: its operation.
local rq, d = nil, nil
if ARGV[7] ~= '0' and ARGV[4] ~= '' then
  d = cjson.decode(ARGV[4])
  rq = KEYS[1] .. ':rq:' .. string.len(d[2]) .. ':' .. d[2] .. ':' .. ARGV[5]
  if not undo and redis.call('EXISTS', rq) == 1 then
    return 0  -- a repeat of a request taken already: not counted again
  end
end
local sign, bit = 1, 1
if undo then
  sign = -1
end
for j = 1, count do
  local b = 8 + (j - 1) * 5
  local amount = tonumber(ARGV[b + 3])
  -- A shadow limit the step did not fit took nothing: nothing to give back.
  if amount > 0 and math.floor(misfits / bit) % 2 == 0 then
    adjust(KEYS[1], ARGV[b + 1], ARGV[b + 2] == '1', sign * amount, tonumber(ARGV[b + 4]),
      tonumber(ARGV[b + 5]), at, now, retention)
  end
  bit = bit * 2
end
if ARGV[7] ~= '0' then
  if undo then
    -- Refused after all: a retry of the caller's request id is a new request. (Its event id
    -- mark stays: the retry's event takes an id of its own, apart from the one taken back.)
    if rq then
      redis.call('DEL', rq)
    end
  else
    -- Taken while the store was away: a retry of the caller's request id is a repeat.
    redis.call('SET', KEYS[1] .. ':id:' .. ARGV[5], '1', 'PX', ARGV[7])
    if rq then
      local fp = fmt(d[4]) .. '/'
      if type(d[5]) == 'number' then
        fp = fp .. fmt(d[5])
      end
      redis.call('HSET', rq, 'f', fp, 'n', 0)
      redis.call('PEXPIRE', rq, ARGV[7])
    end
  end
end
if ARGV[4] ~= '' then
  -- The usage event of a step let through while the store was away, at when it happened; or
  -- the correction taking back the event of a step given back.
  local ident = ARGV[5]
  if undo then
    ident = 'void_' .. ident
  end
  if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[3], '*', 'k', 'u', 't', ARGV[3], 'd', ARGV[4], 'i', ident,
      'a', ARGV[6])
  else
    redis.call('XADD', KEYS[3], '*', 'k', 'u', 't', ARGV[3], 'd', ARGV[4], 'i', ident)
  end
end
return 1
