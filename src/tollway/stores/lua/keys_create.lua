-- One API key's record, created whole or not at all (KEYS[1]: the record; ARGV: field, value, ...).
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
