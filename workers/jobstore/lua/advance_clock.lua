-- A job was admitted from the queue: move the queue's clock up to its position (never back).
-- KEYS: the clock. ARGV[1]: JSON {position}.
local a = cjson.decode(ARGV[1])
if tonumber(a.position) > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], a.position) end
return 1
