-- Persist a pending task and enqueue it in its lane, unless an idempotency key, a doc id or a full
-- queue says no. Query tasks ('q' lane) and purge tasks (doc id '') hold no doc id: no doc lock, no
-- duplicate detection.
-- ARGV: prefix, task_id, tenant, doc_id, queue_score, created_at, sha256, idempotency key ('' = none),
--       max queued overall in the lane (0 = unbounded), default max queued per tenant (0 = unbounded),
--       idempotency ttl, fingerprint of the request (a reused key must match it), lane,
--       then field/value pairs.  ->  {outcome, task id}
local id = ARGV[2]
local t = ARGV[3]
local L, quota_field = lane_arg(ARGV[13])
local documents = ARGV[13] ~= K.QUERY_LANE and ARGV[4] ~= ''
local function status_of(other) return redis.call('HGET', K.task(other), 'status') end
if ARGV[8] ~= '' then
  -- The key's value is "<task id>|<fingerprint of the request that created it>".
  local raw = redis.call('GET', K.idem(t, ARGV[8]))
  if raw then
    local held, fp = raw, ''
    local bar = string.find(raw, '|', 1, true)
    if bar then held, fp = string.sub(raw, 1, bar - 1), string.sub(raw, bar + 1) end
    local st = status_of(held)
    if st and fp ~= '' and fp ~= ARGV[12] then return {'idempotency-mismatch', held} end
    if st and st ~= 'failed' and st ~= 'cancelled' then
      -- A completed task whose document was deleted since no longer answers the request.
      local doc = redis.call('HGET', K.task(held), 'doc_id')
      if st ~= 'completed' or redis.call('GET', K.doc(t, doc)) == held then return {'idempotent', held} end
    end
  end
end
local lock = K.doc(t, ARGV[4])
if documents then
  local holder = redis.call('GET', lock)
  if holder and string.sub(holder, 1, 1) == '!' then return {'deleting', ''} end  -- DELETE /documents runs
  if holder and holder ~= id then
    local st = status_of(holder)
    if st == 'pending' or st == 'processing' or st == 'cancelling' or st == 'completed' then
      if redis.call('HGET', K.task(holder), 'content_sha256') == ARGV[7] then return {'duplicate', holder} end
      if st ~= 'completed' then return {'conflict', holder} end
    end
  end
end
local full = queue_full(L, t, ARGV[9], ARGV[10], quota_field)
if full then return {full, ''} end
local key = K.task(id)
if redis.call('EXISTS', key) == 1 then return {'exists', id} end
local fields = {}
for i = 14, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
if documents then redis.call('SET', lock, id) end
if ARGV[8] ~= '' then redis.call('SET', K.idem(t, ARGV[8]), id..'|'..ARGV[12], 'EX', ARGV[11]) end
redis.call('ZADD', L.queue(t), ARGV[5], id)
redis.call('ZADD', L.queued, ARGV[6], id)
redis.call('SADD', L.active, t)
redis.call('SADD', K.tenants_seen, t)
redis.call('ZADD', K.index(t, K.INDEX_ALL), ARGV[6], id)
redis.call('ZADD', K.index(t, 'pending'), ARGV[6], id)
return {'created', id}
