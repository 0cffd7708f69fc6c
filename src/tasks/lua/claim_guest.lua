-- Claim a waiting document task of tenant ARGV[2] for an instance that does not own the tenant's
-- workspace (a guest: src/tasks/runner.py; the graph locks of src/ingestion/graph_locks.py make its
-- merges safe beside the owner's). The same claim as claim.lua (attempt += 1, lease, owner, running
-- counts; fenced by attempt like any other), but only of a task the owner can spare: the last of
-- the queue first (the owner reaches it last), never its first ARGV[7] tasks (the owner's next
-- claims); only plain documents (kind text, or a file whose name does not end in one of the
-- suffixes ARGV[9..] (the client's name or the stored one): rich formats are parsed by the owner), never run before (attempt 0: a resumed
-- document may need a purge first, which is the owner's), not a new version of a document
-- (replaces), not leased for extraction ahead, and within the tenant's running-task quota.
-- ARGV: prefix, tenant, now, lease_until, owner, default max running per tenant (0 = unbounded),
--       head to leave, how many tasks to look at, rich-format suffixes (lower case, with the dot)
--       ->  the claimed record (HGETALL) or false
local L = lane_arg(K.INGEST_LANE)
local t = ARGV[2]
local now = ARGV[3]
local skip = tonumber(ARGV[7])
local cap = tonumber(redis.call('HGET', K.tenant_quota(t), 'max_running') or ARGV[6])
local running = tonumber(redis.call('HGET', L.run_count, t) or '0')
if cap > 0 and running >= cap then return false end
local total = redis.call('ZCARD', L.queue(t))
if total <= skip then return false end
local rich = {}
for i = 9, #ARGV do rich[ARGV[i]] = true end
local last = math.min(total - skip, tonumber(ARGV[8])) - 1
local ids = redis.call('ZREVRANGE', L.queue(t), 0, last)
for _, id in ipairs(ids) do
  local key = K.task(id)
  local cur = redis.call('HMGET', key, 'status', 'kind', 'attempt', 'replaces', 'filename', 'stored_name',
                         'started_at')
  local plain = cur[2] == 'text'
  if cur[2] == 'file' then
    plain = true
    for _, name in ipairs({cur[5] or '', cur[6] or ''}) do
      local suffix = string.match(string.lower(name), '(%.[^%.]+)$')
      if suffix ~= nil and rich[suffix] then plain = false end
    end
  end
  if cur[1] == 'pending' and plain and (cur[3] == false or cur[3] == '' or cur[3] == '0')
     and (cur[4] == false or cur[4] == '' or cur[4] == '0' or cur[4] == 'False')
     and redis.call('EXISTS', K.prefetch(id)) == 0 then
    dequeue(L, t, id)
    redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HSET', key, 'owner', ARGV[5], 'lease_until', ARGV[4], 'updated_at', now,
               'attempt_started_at', now, 'not_before', '', 'status', 'processing')
    if cur[7] == false or cur[7] == '' then redis.call('HSET', key, 'started_at', now) end
    redis.call('ZREM', K.index(t, 'pending'), id)
    redis.call('ZADD', K.index(t, 'processing'), redis.call('HGET', key, 'created_at'), id)
    redis.call('ZADD', K.running, ARGV[4], id)
    redis.call('HINCRBY', L.run_count, t, 1)
    return redis.call('HGETALL', key)
  end
end
return false
