-- Is there room for one more task of tenant t in a lane? (the API's early answer, before an upload is read)
-- ARGV: prefix, tenant, max queued overall, default max queued per tenant, lane
--   ->  'busy', 'tenant-busy' or 'created'
local L, quota_field = lane_arg(ARGV[5])
return queue_full(L, ARGV[2], ARGV[3], ARGV[4], quota_field) or 'created'
