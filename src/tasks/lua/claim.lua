-- Pick the next task: the highest priority class among the heads of all tenants' queues; within a
-- class, the tenant served longest ago (round robin, so one tenant's bulk upload cannot starve
-- another's single file); tenants at their running-task quota are skipped. Due retries move from
-- dq:<t> to q:<t> first. A task another instance is extracting ahead of the owner (a live
-- prefetch:<id> lease, src/ingestion/prefetch.py) is passed over: the next of the queue is taken;
-- within the head's priority class, a task already extracted ahead goes first (it only needs its
-- merge, while the others are left to the instances extracting ahead).
-- Each lane (ingestion '', queries 'q') is claimed on its own; the per-tenant running quota applies
-- to the ingestion lane only (queries have their own bound, the query dispatcher's slots).
-- ARGV: prefix, now, lease_until, owner, default max running per tenant (0 = unbounded),
--       priority step of the queue score, '1' when only the tenants ARGV[9..#ARGV-1] may be claimed
--       (the workspaces this instance owns) else '0', the lane, and last the minimum priority of
--       the task (an express slot only takes a task that outranks the ones running)
--       ->  the claimed record (HGETALL) or false
local now = ARGV[2]
local step = tonumber(ARGV[6])
local lane = ARGV[8]
local L = lane_arg(lane)
-- queue score = (9 - priority) * step + created_at: a head of a higher class has a lower priority
local max_class = 9 - tonumber(ARGV[#ARGV])
local tenants = nil
if ARGV[7] == '1' then
  tenants = {}
  for i = 9, #ARGV - 1 do tenants[#tenants + 1] = ARGV[i] end
  if #tenants == 0 then return false end
end
for _ = 1, 50 do
  local best_t, best_id, best_class, best_served, best_score = nil, nil, nil, nil, nil
  local candidates = tenants
  if candidates == nil then candidates = redis.call('SMEMBERS', L.active) end
  for _, t in ipairs(candidates) do
    local due = redis.call('ZRANGEBYSCORE', L.delayed(t), '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(due) do
      redis.call('ZREM', L.delayed(t), id)
      local score = redis.call('HGET', K.task(id), 'queue_score')
      if score then redis.call('ZADD', L.queue(t), score, id) end
    end
    local entries = redis.call('ZRANGE', L.queue(t), 0, 19, 'WITHSCORES')
    local head = {}
    for i = 1, #entries, 2 do
      if redis.call('EXISTS', K.prefetch(entries[i])) == 0 then
        if #head == 0 then head = {entries[i], entries[i + 1]} end
        if math.floor(tonumber(entries[i + 1]) / step) > math.floor(tonumber(head[2]) / step) then break end
        if redis.call('HGET', K.task(entries[i]), 'prefetched') == 'done' then
          head = {entries[i], entries[i + 1]}
          break
        end
      end
    end
    if #entries == 0 then
      if redis.call('ZCARD', L.delayed(t)) == 0 then redis.call('SREM', L.active, t) end
    elseif #head > 0 then
      local cap = 0
      if lane ~= K.QUERY_LANE then
        cap = tonumber(redis.call('HGET', K.tenant_quota(t), 'max_running') or ARGV[5])
      end
      local running = tonumber(redis.call('HGET', L.run_count, t) or '0')
      local score = tonumber(head[2])
      local class = math.floor(score / step)
      if class <= max_class and (cap <= 0 or running < cap) then
        local served = tonumber(redis.call('HGET', L.served, t) or '0')
        if best_t == nil or class < best_class or (class == best_class and (served < best_served or
           (served == best_served and score < best_score))) then
          best_t, best_id, best_class, best_served, best_score = t, head[1], class, served, score
        end
      end
    end
  end
  if best_t == nil then return false end
  local t, id = best_t, best_id
  dequeue(L, t, id)
  local key = K.task(id)
  local cur = redis.call('HMGET', key, 'status', 'owner', 'created_at', 'started_at')
  if cur[1] == 'pending' or (cur[1] == 'cancelling' and cur[2] == '') then
    redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HSET', key, 'owner', ARGV[4], 'lease_until', ARGV[3], 'updated_at', now,
               'attempt_started_at', now, 'not_before', '')
    if cur[4] == '' then redis.call('HSET', key, 'started_at', now) end
    if cur[1] == 'pending' then
      redis.call('HSET', key, 'status', 'processing')
      redis.call('ZREM', K.index(t, 'pending'), id)
      redis.call('ZADD', K.index(t, 'processing'), cur[3], id)
    end
    redis.call('ZADD', K.running, ARGV[3], id)
    redis.call('HINCRBY', L.run_count, t, 1)
    redis.call('HSET', L.served, t, now)
    return redis.call('HGETALL', key)
  end
end
return false
