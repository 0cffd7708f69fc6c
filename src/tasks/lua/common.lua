-- Helpers shared by the scripts. The key builders K.* (from keys.py) precede this file; ARGV[1] is the prefix.
-- A task's lane (its queue keys, see keys.py) follows from its kind: queries have a lane of their own.
local function lane_of(key)
  if redis.call('HGET', key, 'kind') == K.QUERY_KIND then return K.lane(K.QUERY_LANE) end
  return K.lane(K.INGEST_LANE)
end
local function dequeue(L, t, id)
  redis.call('ZREM', L.queue(t), id)
  redis.call('ZREM', L.delayed(t), id)
  redis.call('ZREM', L.queued, id)
end
local function stop_running(L, t, id)
  if redis.call('ZREM', K.running, id) == 1 then redis.call('HINCRBY', L.run_count, t, -1) end
end
local function add_history(key, cur_attempt, owner, started, now, outcome, err)
  local raw = redis.call('HGET', key, 'history')
  local history = {}
  if raw and raw ~= '' and raw ~= '{}' then history = cjson.decode(raw) end
  history[#history + 1] = {attempt = tonumber(cur_attempt), owner = owner, started_at = tonumber(started),
                           ended_at = tonumber(now), outcome = outcome, error = err}
  redis.call('HSET', key, 'history', cjson.encode(history))
end
-- Move a task to a final status: out of every queue, re-indexed, TTL set, doc lock released unless completed.
local function finalize(t, id, key, from_status, new_status, created, doc_id, now, ttl)
  local L = lane_of(key)
  local expires = tonumber(now) + tonumber(ttl)
  redis.call('HSET', key, 'status', new_status, 'finished_at', now, 'updated_at', now,
             'owner', '', 'lease_until', '', 'not_before', '', 'expires_at', tostring(expires))
  dequeue(L, t, id)
  stop_running(L, t, id)
  redis.call('ZREM', K.index(t, from_status), id)
  redis.call('ZADD', K.index(t, new_status), created, id)
  redis.call('ZADD', K.expiry, expires, t..'/'..id)
  redis.call('EXPIRE', key, ttl)
  if doc_id and doc_id ~= '' then
    local lock = K.doc(t, doc_id)
    if new_status ~= 'completed' and redis.call('GET', lock) == id then redis.call('DEL', lock) end
  end
end
-- The queue-full rule (the only copy): 'busy' when max_queued tasks wait in lane L overall,
-- 'tenant-busy' when the tenant's own quota (field quota_field of its tenant hash, else
-- default_tenant_max) is reached; false when there is room. 0 means unbounded. Retries waiting out
-- their backoff count as waiting.
local function queue_full(L, t, max_queued, default_tenant_max, quota_field)
  local limit = tonumber(max_queued)
  if limit > 0 and redis.call('ZCARD', L.queued) >= limit then return 'busy' end
  local tenant_limit = tonumber(redis.call('HGET', K.tenant_quota(t), quota_field) or default_tenant_max)
  local tenant_queued = redis.call('ZCARD', L.queue(t)) + redis.call('ZCARD', L.delayed(t))
  if tenant_limit > 0 and tenant_queued >= tenant_limit then return 'tenant-busy' end
  return false
end
-- The lane named by a script argument ('q' = queries, '' = ingestion), and its tenant quota field.
local function lane_arg(name)
  if name == K.QUERY_LANE then return K.lane(K.QUERY_LANE), 'max_pending_queries' end
  return K.lane(K.INGEST_LANE), 'max_pending'
end
