-- Cancel a task that never ran at once; mark one that runs (or ran before) 'cancelling'. A waiting
-- query task is cancelled at once even after an earlier attempt: a query leaves nothing to purge.
-- ARGV: prefix, id, now, ttl_cancelled  ->  {outcome, status after the call}
local id = ARGV[2]
local key = K.task(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'doc_id', 'created_at', 'tenant')
if not cur[1] then return {'missing', 'missing'} end
local t = cur[5]
if cur[1] == 'pending' and (cur[2] == '0' or redis.call('HGET', key, 'kind') == K.QUERY_KIND) then
  redis.call('HSET', key, 'stage', 'cancelled', 'error', 'cancelled by user')
  finalize(t, id, key, 'pending', 'cancelled', cur[4], cur[3], ARGV[3], ARGV[4])
  return {'cancelled', 'cancelled'}
end
if cur[1] == 'pending' or cur[1] == 'processing' then
  -- It ran before (or runs now): its partial data must be removed, so a worker finishes the cancel.
  redis.call('HSET', key, 'status', 'cancelling', 'stage', 'cleanup', 'cancel_requested', '1',
             'updated_at', ARGV[3])
  redis.call('ZREM', K.index(t, cur[1]), id)
  redis.call('ZADD', K.index(t, 'cancelling'), cur[4], id)
  local L = lane_of(key)
  if cur[1] == 'pending' and redis.call('ZSCORE', L.delayed(t), id) then
    redis.call('ZREM', L.delayed(t), id)
    redis.call('ZADD', L.queue(t), redis.call('HGET', key, 'queue_score'), id)
  end
  return {'cancelling', 'cancelling'}
end
if cur[1] == 'cancelling' then return {'already-cancelling', 'cancelling'} end
return {'already-final', cur[1]}
