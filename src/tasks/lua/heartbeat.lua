-- Renew the lease of one attempt, if it still owns the task.
-- ARGV: prefix, id, epoch, owner, lease_until  ->  'lost', 'renewed' or 'cancel-requested'
local key = K.task(ARGV[2])
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner')
if (cur[1] ~= 'processing' and cur[1] ~= 'cancelling') or cur[2] ~= ARGV[3] or cur[3] ~= ARGV[4] then
  return 'lost'
end
redis.call('HSET', key, 'lease_until', ARGV[5])
redis.call('ZADD', K.running, ARGV[5], ARGV[2])
if cur[1] == 'cancelling' then return 'cancel-requested' end
return 'renewed'
