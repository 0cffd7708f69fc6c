-- Record the stage and progress of the current attempt (a stale epoch is refused), and announce the
-- change on the task-events channel (one round trip: progress is the most frequent task write).
-- ARGV: prefix, id, epoch, stage, progress, now, events channel  ->  1 recorded, 0 refused
local key = K.task(ARGV[2])
local cur = redis.call('HMGET', key, 'status', 'attempt')
if cur[1] ~= 'processing' or cur[2] ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'stage', ARGV[4], 'progress', ARGV[5], 'updated_at', ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[2])
return 1
