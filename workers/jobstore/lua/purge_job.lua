-- Remove one finished job that ended at or before the cut-off, with what names it: its record, its entry among the
-- finished jobs and in its batch's jobs, and its task's owner (when that still names this job). The batch's
-- counters keep counting it (`purged` counts those that left). A job that is not finished is never touched.
-- KEYS: job, finished jobs, batch, batch's jobs, and the owner of the task the job named when it was read (absent
-- when it named none). ARGV[1]: JSON {ref, job_id, cutoff, terminal = [terminal statuses]}.
-- Returns 1 when the job was removed, 0 when it was not (revived, or ended again after the cut-off, or gone).
local job_key, finished_key, batch_key, jobs_key, owner_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local a = cjson.decode(ARGV[1])
local ended = redis.call('ZSCORE', finished_key, a.ref)
if not ended or tonumber(ended) > tonumber(a.cutoff) then return 0 end
local status = redis.call('HGET', job_key, 'status')
local terminal = {}
for _, s in ipairs(a.terminal) do terminal[s] = true end
redis.call('ZREM', finished_key, a.ref)
if status and not terminal[status] then return 0 end  -- indexed, yet not finished: only the index entry goes
if owner_key and redis.call('GET', owner_key) == a.ref then redis.call('DEL', owner_key) end
redis.call('ZREM', jobs_key, a.job_id)
if not status then return 0 end
redis.call('DEL', job_key)
if redis.call('EXISTS', batch_key) == 1 then redis.call('HINCRBY', batch_key, 'purged', 1) end
return 1
