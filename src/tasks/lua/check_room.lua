-- Is there room for one more task of tenant t? (the API's early answer, before an upload is read)
-- ARGV: prefix, tenant, max queued overall, default max queued per tenant  ->  'busy', 'tenant-busy' or 'created'
return queue_full(ARGV[2], ARGV[3], ARGV[4]) or 'created'
