-- Assign a plan ('' to go back to the default). An assigned subject's state never expires;
-- an unassigned one gets its expiry back from the next step, unless it holds credits.
-- KEYS: 1 the subject's hash; ARGV: 1 plan
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'plan', 'exp')
  if redis.call('HEXISTS', KEYS[1], 'cr') == 1 then
    redis.call('HSET', KEYS[1], 'exp', NEVER)  -- prepaid credits: kept (see credits.lua)
  end
else
  redis.call('HSET', KEYS[1], 'plan', ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('HDEL', KEYS[1], 'exp')
end
return 1
