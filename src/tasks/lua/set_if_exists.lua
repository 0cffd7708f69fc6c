-- Set one field of a task record only if the record still exists (never resurrect an expired one).
-- ARGV: prefix, id, field, value  ->  1 set, 0 gone
local key = K.task(ARGV[2])
if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, ARGV[3], ARGV[4]) return 1 end
return 0
