-- No more jobs will be added to the batch. KEYS: batch, events stream. ARGV[1]: JSON {batch_id, now, now_iso,
-- maxlen}. Returns 1 when this call finished the batch (every job already terminal).
local a = cjson.decode(ARGV[1])
redis.call('HSET', KEYS[1], 'sealed', '1')
return finish_batch(KEYS[1], KEYS[2], a.batch_id, a.now, a.now_iso, a.maxlen)
