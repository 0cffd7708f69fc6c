-- Lease a waiting document task of tenant ARGV[2] to extract it ahead of its workspace's owner
-- (src/ingestion/prefetch.py): the last of the queue first (the owner reaches it last), never its
-- first ARGV[6] tasks (the owner's next claims), only tasks of kind text/file not yet extracted or
-- found unsuitable and not leased. The lease is a key that expires unless renewed; claim.lua passes
-- over a leased task, so the owner never extracts a document while another instance does.
-- ARGV: prefix, tenant, instance, lease milliseconds, how many tasks to look at, head to leave
--       ->  the leased record (HGETALL) or false
local L = lane_arg(K.INGEST_LANE)
local t = ARGV[2]
local skip = tonumber(ARGV[6])
local total = redis.call('ZCARD', L.queue(t))
if total <= skip then return false end
local last = math.min(total - skip, tonumber(ARGV[5])) - 1
local ids = redis.call('ZREVRANGE', L.queue(t), 0, last)
for _, id in ipairs(ids) do
  local key = K.task(id)
  local cur = redis.call('HMGET', key, 'status', 'kind', 'prefetched')
  if cur[1] == 'pending' and (cur[2] == 'text' or cur[2] == 'file') and not cur[3]
     and redis.call('SET', K.prefetch(id), ARGV[3], 'NX', 'PX', ARGV[4]) then
    return redis.call('HGETALL', key)
  end
end
return false
