-- Persist a pending task and enqueue it, unless an idempotency key, a doc id or a full queue says no.
-- ARGV: prefix, task_id, tenant, doc_id, queue_score, created_at, sha256, idempotency key ('' = none),
--       max queued overall (0 = unbounded), default max queued per tenant (0 = unbounded),
--       idempotency ttl, then field/value pairs.  ->  {outcome, task id}
local id = ARGV[2]
local t = ARGV[3]
local function status_of(other) return redis.call('HGET', K.task(other), 'status') end
if ARGV[8] ~= '' then
  local held = redis.call('GET', K.idem(t, ARGV[8]))
  if held then
    local st = status_of(held)
    if st and st ~= 'failed' and st ~= 'cancelled' then return {'idempotent', held} end
  end
end
local lock = K.doc(t, ARGV[4])
local holder = redis.call('GET', lock)
if holder and holder ~= id then
  local st = status_of(holder)
  if st == 'pending' or st == 'processing' or st == 'cancelling' or st == 'completed' then
    if redis.call('HGET', K.task(holder), 'content_sha256') == ARGV[7] then return {'duplicate', holder} end
    if st ~= 'completed' then return {'conflict', holder} end
  end
end
local full = queue_full(t, ARGV[9], ARGV[10])
if full then return {full, ''} end
local key = K.task(id)
if redis.call('EXISTS', key) == 1 then return {'exists', id} end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('SET', lock, id)
if ARGV[8] ~= '' then redis.call('SET', K.idem(t, ARGV[8]), id, 'EX', ARGV[11]) end
redis.call('ZADD', K.queue(t), ARGV[5], id)
redis.call('ZADD', K.queued, ARGV[6], id)
redis.call('SADD', K.active, t)
redis.call('SADD', K.tenants_seen, t)
redis.call('ZADD', K.index(t, K.INDEX_ALL), ARGV[6], id)
redis.call('ZADD', K.index(t, 'pending'), ARGV[6], id)
return {'created', id}
