-- A stage of the job raised something unexpected: count it on the job, if the job exists.
-- KEYS: job. Returns the count (0: no such job).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'stage_crashes', 1)
