-- End a prefetch lease held by instance ARGV[3] on task ARGV[2]; ARGV[4] is what became of it
-- ('done': its extraction is in the shared cache; 'unsuitable': never to be tried again; '': give
-- it back untouched). -> 1 when the lease was ours.
local key = K.prefetch(ARGV[2])
if redis.call('GET', key) ~= ARGV[3] then return 0 end
redis.call('DEL', key)
if ARGV[4] ~= '' and redis.call('EXISTS', K.task(ARGV[2])) == 1 then
  redis.call('HSET', K.task(ARGV[2]), 'prefetched', ARGV[4])
end
return 1
