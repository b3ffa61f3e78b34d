-- No more jobs will be added to the batch. KEYS: batch, events stream, finished batches.
-- ARGV[1]: JSON {batch_id, now, now_iso, maxlen}. Returns 1 when this call finished the batch (every job already
-- terminal). A batch finished before it was reopened (and not given a job since) is indexed again as it was.
local a = cjson.decode(ARGV[1])
redis.call('HSET', KEYS[1], 'sealed', '1')
local done_at = redis.call('HGET', KEYS[1], 'done_at')
if done_at then
  redis.call('ZADD', KEYS[3], tonumber(done_at), a.batch_id)
  return 0
end
return finish_batch(KEYS[1], KEYS[2], KEYS[3], a.batch_id, a.now, a.now_iso, a.maxlen)
