-- End of a deletion: drop the marker (deleted), or put back the previous holder (nothing deleted).
-- ARGV: prefix, tenant, doc_id, marker, previous holder ('' = none)  ->  1 if the marker was still there
local lock = K.doc(ARGV[2], ARGV[3])
if redis.call('GET', lock) ~= ARGV[4] then return 0 end
if ARGV[5] == '' then redis.call('DEL', lock) else redis.call('SET', lock, ARGV[5]) end
return 1
