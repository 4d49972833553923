-- The atomic step: check every rule, then consume all or nothing.
-- KEYS: 1 the subject's hash
-- ARGV: 1 a JSON array: mode (0 acquire, 1 reserve, 2 peek), units, micro-units of money,
--         hold ttl (us), deadline (us, 0 for none), an acquire's sequence number and its
--         process's low-water mark (0 and 0 for none; see tollway.stores.step_ids), then 6
--         items per rule:
--         rate:   kind 0 (+8 shadow), field, emission (us), capacity (us), 0, 0
--         window: kind 1 units / 2 money (+8 shadow), field, hard limit, start, end (us),
--                 threshold marks (an array) or 0
--         gate:   kind 3, field, probe (us), 0, 0, 0: the field holds a time before which
--                 the step is refused; past it, a probe time > 0 lets this step through and
--                 sets the field to now + probe (one half-open probe at a time)
--         credits: kind 4 (+8 overage or shadow: does not deny), field (c:CUR), the limit's
--                 name, 0, 0, 0: draws the money from the balance, does not fit when it cannot
--                 cover it; past the earliest grant expiry (field^) it allocates first
--       2 expected plan ('' for none), 3 hold id (reserve), or the id of the acquire's
--       process (with a sequence number; '' for none), and with events
--       (see tollway.events) or a request id: 4 the usage template ('' for no
--       events), 5 the caller's request id ('' for none), 6 its attributes (JSON, or ''),
--       7 how long a request id is remembered (ms), and with a request id: 8 its scope (the
--       operation), 9 its fingerprint (cost/amount), 10 how often it may be repeated
-- KEYS: 2 the event stream (with events), in the subject's hash slot
-- Reply: {code, now, misfits, crossings, crossing..., value...}; code (tollway.engine.replies)
--        OK taken, DENIED denied, DUPLICATE a repeat of a request id taken on this scope
--        (only rates counted again), REPEATS the id was repeated too often, CONFLICT it was
--        taken at another cost or amount, PLAN_MISMATCH (+ plan), STALE_WINDOW, EXPIRED
--        past its deadline (the client has given
--        up on this step, and may let it through unrecorded and journal it: so it must not
--        count here). Values are after the step when taken, as
--        found otherwise. A crossing is rule * 64 + threshold (0-based), reported by the one
--        step that first reaches the threshold in its window (marked in field#threshold).
local now = clock()
local key = KEYS[1]
local spec = cjson.decode(ARGV[1])
if spec[5] > 0 and now > spec[5] then
  return {EXPIRED, now, 0, 0}
end
local n = (#spec - 7) / 6
local names = {'plan', 'hx', 'exp'}
for b = 8, #spec, 6 do
  names[#names + 1] = spec[b + 1]
  local kind = spec[b] % 8
  if kind == 1 or kind == 2 then
    if now < spec[b + 3] or now >= spec[b + 4] then
      return {STALE_WINDOW, now, 0, 0}
    end
    names[#names + 1] = spec[b + 1] .. '@'
  elseif kind == 4 then
    names[#names + 1] = spec[b + 1] .. '^'
  end
end
-- An acquire's identity (tollway.stores.step_ids): its process, sequence number, and the
-- lowest number of that process not yet settled (numbers in the JSON array: reading them
-- there costs a tenth of parsing a string); recorded in field s:PROCESS when applied.
local ident = nil
if spec[1] == 0 and spec[6] > 0 then
  ident = {'s:' .. ARGV[3], tostring(spec[6]), spec[7]}  -- below 2^53: written whole
  names[#names + 1] = ident[1]
end
local found = redis.call('HMGET', key, unpack(names))
local plan = found[1]
if (plan or '') ~= ARGV[2] then
  return {PLAN_MISMATCH, now, 0, 0, plan or ''}
end
local retention = RETENTION
if found[2] and tonumber(found[2]) <= now then
  sweep(key, now, retention)
  found = redis.call('HMGET', key, unpack(names))
end
local template, call_id = ARGV[4] or '', ARGV[5] or ''
-- A request id is scoped to (subject, operation): KEY:rq:LEN:OP:ID (the length keeps it
-- injective) holds the fingerprint it was taken at (f) and how often it was repeated (n).
local seen, repeat_of, refused = nil, false, nil
if call_id ~= '' and spec[1] == 0 then
  seen = key .. ':rq:' .. string.len(ARGV[8]) .. ':' .. ARGV[8] .. ':' .. call_id
  local rec = redis.call('HMGET', seen, 'f', 'n')
  if rec[1] then
    if rec[1] ~= ARGV[9] then
      refused = CONFLICT
    elseif tonumber(rec[2]) >= tonumber(ARGV[10]) then
      refused = REPEATS
    end
    repeat_of = true
  end
end
local units, micros = spec[2], spec[3]
local values, after = {}, {}
local fresh, misfits, bit, denied = 0, 0, 1, false
local overage = ''  -- the name of a credits limit the step passes without drawing
local pos = 4
for j = 1, n do
  local b = j * 6 + 2
  local kind = spec[b] % 8
  local v = tonumber(found[pos]) or 0
  local new
  pos = pos + 1
  if kind == 0 then
    if v < now then
      new = now + units * spec[b + 2]
    else
      new = v + units * spec[b + 2]
    end
    if new - now > spec[b + 3] then
      new = nil
    end
  elseif kind == 3 then
    if v > now then
      new = nil
    elseif v > 0 and spec[b + 2] > 0 then
      new = now + spec[b + 2]
    else
      new = v
    end
  elseif kind == 4 then
    local soonest = tonumber(found[pos])
    pos = pos + 1
    if soonest and now >= soonest then
      v = credits_allocate(key, spec[b + 1], now)
    end
    if repeat_of then
      new = v  -- drawn once, by the step that took the id
    else
      new = v - micros
      if new < 0 then
        new = nil
        overage = spec[b + 2]
      end
    end
  else
    if tonumber(found[pos]) ~= spec[b + 3] then
      v = 0
      if not repeat_of then
        fresh = fresh + bit
      end
    end
    pos = pos + 1
    if repeat_of then
      -- A repeat is counted once, by the step that took the id: rates only.
      new = v
    elseif kind == 1 then
      new = v + units
    else
      new = v + micros
    end
    if new > spec[b + 2] and not repeat_of then
      new = nil
    end
  end
  values[j] = v
  if new then
    after[j] = new
  else
    after[j] = v
    misfits = misfits + bit
    if spec[b] < 8 then
      denied = true
    end
  end
  bit = bit * 2
end
local mode = spec[1]
if mode == 2 then
  return {OK, now, misfits, 0, unpack(values)}
end
if refused then
  -- Refused for its id alone, whatever the limits say: nothing written, values as found.
  return {refused, now, 0, 0, unpack(values)}
end
if denied then
  if template ~= '' then
    -- A limit exceeded: reported by the first refused step of its window.
    bit = 1
    for j = 1, n do
      local b = j * 6 + 2
      local kind = spec[b] % 8
      if spec[b] < 8 and (kind == 1 or kind == 2) and math.floor(misfits / bit) % 2 == 1 then
        local flag = spec[b + 1] .. '#x'
        if tonumber(redis.call('HGET', key, flag)) ~= spec[b + 3] then
          redis.call('HSET', key, flag, fmt(spec[b + 3]))
          keep_until(key, spec[b + 4] + retention, plan, redis.call('HGET', key, 'exp'))
          redis.call('XADD', KEYS[2], '*', 'k', 'x', 't', fmt(now), 'd', template,
            'f', spec[b + 1], 's', fmt(spec[b + 3]), 'e', fmt(spec[b + 4]), 'v', fmt(values[j]))
        end
      end
      bit = bit * 2
    end
  end
  return {DENIED, now, misfits, 0, unpack(values)}
end
local event_id = call_id
if repeat_of then
  redis.call('HINCRBY', seen, 'n', 1)
  template = ''
elseif seen then
  redis.call('HSET', seen, 'f', ARGV[9], 'n', 0)
  redis.call('PEXPIRE', seen, ARGV[7])
  -- The event id: the caller's id, or ID~OP when another operation (or a reservation) has
  -- it, or one of the stream's own when even that is taken: one event per scope and id.
  if not redis.call('SET', key .. ':id:' .. call_id, '1', 'NX', 'PX', ARGV[7]) then
    event_id = call_id .. '~' .. ARGV[8]
    if not redis.call('SET', key .. ':id:' .. event_id, '1', 'NX', 'PX', ARGV[7]) then
      event_id = ''
    end
  end
end
if template ~= '' and mode == 0 and overage ~= '' then
  -- Passed by a credits overage: the entry says so, and its event will not name the limit.
  local entry = {'k', 'u', 't', fmt(now), 'd', template, 'o', overage}
  if event_id ~= '' then
    entry[#entry + 1] = 'i'
    entry[#entry + 1] = event_id
  end
  if ARGV[6] ~= '' then
    entry[#entry + 1] = 'a'
    entry[#entry + 1] = ARGV[6]
  end
  redis.call('XADD', KEYS[2], '*', unpack(entry))
elseif template ~= '' and mode == 0 then
  if event_id ~= '' then
    if ARGV[6] ~= '' then
      redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', template, 'i', event_id,
        'a', ARGV[6])
    else
      redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', template, 'i', event_id)
    end
  elseif ARGV[6] ~= '' then
    redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', template, 'a', ARGV[6])
  else
    redis.call('XADD', KEYS[2], '*', 'k', 'u', 't', fmt(now), 'd', template)
  end
end
local writes, needed = {}, 0
bit = 1
for j = 1, n do
  local b = j * 6 + 2
  local renew = math.floor(fresh / bit) % 2 == 1
  if after[j] ~= values[j] or renew then
    writes[#writes + 1] = spec[b + 1]
    writes[#writes + 1] = after[j]
    local kind = spec[b] % 8
    if kind == 0 or kind == 3 then
      if after[j] > needed then
        needed = after[j]
      end
    elseif kind ~= 4 then  -- a balance is no time: its grants keep the hash alive
      if renew then
        writes[#writes + 1] = spec[b + 1] .. '@'
        writes[#writes + 1] = spec[b + 3]
      end
      if spec[b + 4] + retention > needed then
        needed = spec[b + 4] + retention
      end
    end
  end
  bit = bit * 2
end
if ident then
  -- Keep what this process has not settled, add this step (with the shadow limits it did not
  -- fit: they took nothing), so a reply lost on the way can be resolved (see replay.lua).
  local token = ident[2]
  if misfits > 0 then
    token = token .. '/' .. fmt(misfits)
  end
  local record = found[#names]
  -- Usually the record is one settled step, dropped here without a loop.
  local settled = tonumber(record)
  if record and not (settled and settled < ident[3]) then
    local kept = {}
    for old in string.gmatch(record, '%S+') do
      if tonumber(string.match(old, '^%d+')) >= ident[3] then
        kept[#kept + 1] = old
      end
    end
    kept[#kept + 1] = token
    token = table.concat(kept, ' ')
  end
  writes[#writes + 1] = ident[1]
  writes[#writes + 1] = token
  if needed < now then
    needed = now  -- a step that changed no counter still keeps its record's hash alive
  end
end
if #writes > 0 then
  redis.call('HSET', key, unpack(writes))
  keep_until(key, needed, plan, found[3])
end
if mode == 1 then
  local id = ARGV[3]
  local expires = now + spec[4]
  local entries = {}
  bit = 1
  for j = 1, n do
    local b = j * 6 + 2
    local kind = spec[b] % 8
    local held, tag, start, ends = 0, 'w', spec[b + 3], spec[b + 4]
    if math.floor(misfits / bit) % 2 == 0 and kind ~= 3 then
      if kind == 0 then
        held = units * spec[b + 2]
      elseif kind == 1 then
        held = units
      else
        held = micros
      end
    end
    if kind == 0 then
      tag, start, ends = 'r', 0, 0
    elseif kind == 3 then
      start, ends = 0, 0
    end
    entries[#entries + 1] = spec[b + 1]
    entries[#entries + 1] = tag .. fmt(held) .. '@' .. fmt(start) .. '@' .. fmt(ends)
    bit = bit * 2
  end
  local hold = key .. ':h:' .. id
  local holds = key .. ':holds'
  local until_ms = fmt(math.floor((expires + retention) / 1000))
  if #entries > 0 then
    redis.call('HSET', hold, unpack(entries))
    redis.call('PEXPIREAT', hold, until_ms)
  end
  redis.call('ZADD', holds, fmt(expires), id)
  redis.call('PEXPIREAT', holds, until_ms, 'GT')
  redis.call('PEXPIREAT', holds, until_ms, 'NX')
  if not found[2] or tonumber(found[2]) > expires then
    redis.call('HSET', key, 'hx', fmt(expires))
  end
  keep_until(key, expires + retention, plan, redis.call('HGET', key, 'exp'))
end
local reply = {OK, now, misfits, 0}
if repeat_of then
  reply[1] = DUPLICATE
end
bit = 1
for j = 1, n do
  local b = j * 6 + 2
  local marks = spec[b + 5]
  if marks ~= 0 and math.floor(misfits / bit) % 2 == 0 then
    for k, mark in ipairs(marks) do
      if values[j] < mark and mark <= after[j] then
        local flag = spec[b + 1] .. '#' .. (k - 1)
        if tonumber(redis.call('HGET', key, flag)) ~= spec[b + 3] then
          redis.call('HSET', key, flag, fmt(spec[b + 3]))
          reply[#reply + 1] = (j - 1) * 64 + k - 1
          if template ~= '' then
            redis.call('XADD', KEYS[2], '*', 'k', 't', 't', fmt(now), 'd', template,
              'f', spec[b + 1], 'n', fmt(k - 1), 's', fmt(spec[b + 3]), 'e', fmt(spec[b + 4]),
              'v', fmt(after[j]))
          end
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
