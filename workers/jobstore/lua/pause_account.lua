-- Pause an account and announce it, in one step (a crash between the two would leave a pause no event told of).
-- KEYS: paused accounts, events stream. ARGV[1]: JSON {account, record, event, maxlen}.
-- Returns 1 when this call paused it, 0 when it already was.
local a = cjson.decode(ARGV[1])
if redis.call('HSETNX', KEYS[1], a.account, a.record) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', a.maxlen, '*', 'event', a.event)
return 1
