-- Assign a plan ('' to go back to the default). An assigned subject's state never expires;
-- an unassigned one gets its expiry back from the next step.
-- KEYS: 1 the subject's hash; ARGV: 1 plan
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'plan', 'exp')
else
  redis.call('HSET', KEYS[1], 'plan', ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('HDEL', KEYS[1], 'exp')
end
return 1
