-- Record the end of an attempt in a final status.
-- ARGV: prefix, id, epoch ('' = not tied to an attempt), allowed current statuses (comma list),
--       new status, now, ttl, stage, progress, result, error
--   ->  'ok', 'missing', 'cancelling', 'not-running', 'already-final' or 'stale'
local id = ARGV[2]
local key = K.task(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'doc_id', 'created_at', 'owner',
                       'attempt_started_at', 'tenant')
if not cur[1] then return 'missing' end
if not string.find(','..ARGV[4]..',', ','..cur[1]..',', 1, true) then
  if cur[1] == 'cancelling' then return 'cancelling' end
  if cur[1] == 'pending' or cur[1] == 'processing' then return 'not-running' end
  return 'already-final'
end
if ARGV[3] ~= '' and cur[2] ~= ARGV[3] then return 'stale' end
local now = ARGV[6]
if ARGV[3] ~= '' then add_history(key, cur[2], cur[5], cur[6], now, ARGV[5], ARGV[11]) end
redis.call('HSET', key, 'stage', ARGV[8], 'progress', ARGV[9], 'result', ARGV[10], 'error', ARGV[11])
finalize(cur[7], id, key, cur[1], ARGV[5], cur[4], cur[3], now, ARGV[7])
return 'ok'
