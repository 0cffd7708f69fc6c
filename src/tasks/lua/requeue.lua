-- Hand a running task back to the queue (lease expired, owner restarted, shutdown, transient
-- failure), or dead-letter it when its failures reach the limit.
-- ARGV: prefix, id, owner ('' = any), now, max_failures, ttl_failed, lease_before ('' = any),
--       not_before ('' = now), outcome, error, counts_as_failure ('1'/'0'), epoch ('' = any)
--   ->  'requeued', 'dead-lettered', 'skipped', 'queued', 'not-owner', 'stale' or 'alive'
local id = ARGV[2]
local key = K.task(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner', 'lease_until', 'queue_score',
                       'created_at', 'doc_id', 'attempt_started_at', 'tenant')
local t = cur[9]
local L = lane_of(key)
if cur[1] ~= 'processing' and cur[1] ~= 'cancelling' then
  if t then stop_running(L, t, id) else redis.call('ZREM', K.running, id) end
  return 'skipped'
end
if cur[3] == '' then return 'queued' end
if ARGV[3] ~= '' and cur[3] ~= ARGV[3] then return 'not-owner' end
if ARGV[12] ~= '' and cur[2] ~= ARGV[12] then return 'stale' end
if ARGV[7] ~= '' and tonumber(cur[4]) >= tonumber(ARGV[7]) then return 'alive' end
local now = ARGV[4]
add_history(key, cur[2], cur[3], cur[8], now, ARGV[9], ARGV[10])
stop_running(L, t, id)
local failures = tonumber(redis.call('HGET', key, 'failures') or '0') or 0
-- An attempt that was only cleaning up a cancelled task is no failure of its document.
local counts = ARGV[11] == '1' and cur[1] == 'processing'
if counts then failures = redis.call('HINCRBY', key, 'failures', 1) end
if counts and failures >= tonumber(ARGV[5]) then
  redis.call('HSET', key, 'stage', 'failed',
             'error', 'gave up after '..failures..' failed attempts; last: '..ARGV[10])
  finalize(t, id, key, 'processing', 'failed', cur[6], cur[7], now, ARGV[6])
  return 'dead-lettered'
end
redis.call('HSET', key, 'owner', '', 'lease_until', '', 'updated_at', now, 'not_before', ARGV[8])
if cur[1] == 'processing' then
  redis.call('HSET', key, 'status', 'pending', 'stage', 'queued')
  redis.call('ZREM', K.index(t, 'processing'), id)
  redis.call('ZADD', K.index(t, 'pending'), cur[6], id)
end
if ARGV[8] ~= '' and cur[1] == 'processing' then
  redis.call('HSET', key, 'stage', 'retry-wait')
  redis.call('ZADD', L.delayed(t), ARGV[8], id)
else
  redis.call('ZADD', L.queue(t), cur[5], id)
end
redis.call('ZADD', L.queued, cur[6], id)
redis.call('SADD', L.active, t)
return 'requeued'
