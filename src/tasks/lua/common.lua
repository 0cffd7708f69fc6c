-- Helpers shared by the scripts. The key builders K.* (from keys.py) precede this file; ARGV[1] is the prefix.
local function dequeue(t, id)
  redis.call('ZREM', K.queue(t), id)
  redis.call('ZREM', K.delayed(t), id)
  redis.call('ZREM', K.queued, id)
end
local function stop_running(t, id)
  if redis.call('ZREM', K.running, id) == 1 then redis.call('HINCRBY', K.run_count, t, -1) end
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
  local expires = tonumber(now) + tonumber(ttl)
  redis.call('HSET', key, 'status', new_status, 'finished_at', now, 'updated_at', now,
             'owner', '', 'lease_until', '', 'not_before', '', 'expires_at', tostring(expires))
  dequeue(t, id)
  stop_running(t, id)
  redis.call('ZREM', K.index(t, from_status), id)
  redis.call('ZADD', K.index(t, new_status), created, id)
  redis.call('ZADD', K.expiry, expires, t..'/'..id)
  redis.call('EXPIRE', key, ttl)
  local lock = K.doc(t, doc_id)
  if new_status ~= 'completed' and redis.call('GET', lock) == id then redis.call('DEL', lock) end
end
-- The queue-full rule (the only copy): 'busy' when max_queued tasks wait overall, 'tenant-busy' when
-- the tenant's own quota (its tenant hash, else default_tenant_max) is reached; false when there is room.
-- 0 means unbounded. Retries waiting out their backoff count as waiting.
local function queue_full(t, max_queued, default_tenant_max)
  local limit = tonumber(max_queued)
  if limit > 0 and redis.call('ZCARD', K.queued) >= limit then return 'busy' end
  local tenant_limit = tonumber(redis.call('HGET', K.tenant_quota(t), 'max_pending') or default_tenant_max)
  local tenant_queued = redis.call('ZCARD', K.queue(t)) + redis.call('ZCARD', K.delayed(t))
  if tenant_limit > 0 and tenant_queued >= tenant_limit then return 'tenant-busy' end
  return false
end
