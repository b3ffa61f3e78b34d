-- Remove one sealed batch that finished at or before the cut-off and has no job left (each one purged): its
-- record, its (empty) jobs, its rejected rows, and its entries among the batches and the finished batches.
-- KEYS: batch, batch's jobs, batch's rejected rows, batches, finished batches. ARGV[1]: JSON {batch_id, cutoff}.
-- Returns 1 when the batch was removed, 0 when it stays (jobs left, or not finished before the cut-off).
local batch_key, jobs_key, rejected_key, batches_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local a = cjson.decode(ARGV[1])
local done = redis.call('ZSCORE', done_key, a.batch_id)
if not done or tonumber(done) > tonumber(a.cutoff) then return 0 end
local b = redis.call('HMGET', batch_key, 'sealed', 'done_at')
if b[1] ~= '1' or not b[2] then  -- indexed, yet not finished: only the index entry goes
  redis.call('ZREM', done_key, a.batch_id)
  return 0
end
if redis.call('ZCARD', jobs_key) > 0 then return 0 end
redis.call('DEL', batch_key, jobs_key, rejected_key)
redis.call('ZREM', batches_key, a.batch_id)
redis.call('ZREM', done_key, a.batch_id)
return 1
