-- Move a job's due time later (never earlier), in the index and on the job together, if it is still indexed and
-- still exists (a stale entry of a job gone is the sweep's to drop, not to bring back as a record of one field).
-- KEYS: job, due index. ARGV[1]: JSON {ref, due_at}. Returns 1 when moved.
local a = cjson.decode(ARGV[1])
local score = redis.call('ZSCORE', KEYS[2], a.ref)
if not score or tonumber(score) >= tonumber(a.due_at) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], tonumber(a.due_at), a.ref)
redis.call('HSET', KEYS[1], 'due_at', a.due_at)
return 1
