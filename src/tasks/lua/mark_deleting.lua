-- Before a document is purged, its doc lock becomes a "being deleted" marker (never a task id), so
-- `create` neither answers "duplicate" with the task whose document is going away nor starts a new
-- one mid-deletion. ARGV: prefix, tenant, doc_id, marker, marker ttl  ->  {outcome, previous holder}
-- outcome: 'marked', 'live' (a live task holds the doc id) or 'deleting' (a deletion already runs).
local lock = K.doc(ARGV[2], ARGV[3])
local holder = redis.call('GET', lock)
if holder and string.sub(holder, 1, 1) == '!' then return {'deleting', ''} end
if holder then
  local st = redis.call('HGET', K.task(holder), 'status')
  if st == 'pending' or st == 'processing' or st == 'cancelling' then return {'live', holder} end
end
redis.call('SET', lock, ARGV[4], 'EX', ARGV[5])
return {'marked', holder or ''}
