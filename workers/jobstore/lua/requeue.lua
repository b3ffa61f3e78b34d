-- Put an accepted job back in its model's queue, at the front of its band's current turn (one the recovery
-- sweep found waiting outside the queue). KEYS: batch, wait queue, its clock. ARGV[1]: JSON {ref}.
-- Returns 1 when it was put back, 0 when it already waited there.
local a = cjson.decode(ARGV[1])
local clock = tonumber(redis.call('GET', KEYS[3]) or '0')
return redis.call('ZADD', KEYS[2], 'NX', queue_score(KEYS[1], clock), a.ref)
