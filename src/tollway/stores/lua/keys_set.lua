-- Set fields of an existing API key record, never creating a stray one (KEYS[1]: the record;
-- ARGV[1]: '1' to set only the fields not set yet (HSETNX, so a revocation is never lost to a
-- concurrent write), '0' to overwrite; then field, value, ...). 1 if the record exists.
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local only_new = ARGV[1] == '1'
for i = 2, #ARGV, 2 do
  if only_new then
    redis.call('hsetnx', KEYS[1], ARGV[i], ARGV[i + 1])
  else
    redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
