-- Create a job waiting in its model's queue, unless it exists.
-- KEYS: job, batch, batch's jobs, batches, counts (jobs by status), the model's wait queue, its clock, finished
-- batches. ARGV[1]: JSON {ref, batch_id, job_id, line, now, model, record = {name: value}}.
-- Returns the existing job's status, or '' when created. The queue score puts the job in its batch's
-- priority band and, within the band, at a fair position: a batch's jobs count on from the queue's clock when
-- the batch first queued for the model, so batches of one band take turns.
local job_key, batch_key, jobs_key, batches_key, counts_key, queue_key, clock_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', job_key) == 1 then
  return redis.call('HGET', job_key, 'status')
end
local fields = {}
for name, value in pairs(a.record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', job_key, unpack(fields))
redis.call('ZADD', jobs_key, tonumber(a.line), a.job_id)
local status = redis.call('HGET', job_key, 'status')
redis.call('HINCRBY', batch_key, 'total', 1)
redis.call('HINCRBY', batch_key, 'n:' .. status, 1)
redis.call('HINCRBY', counts_key, status, 1)
redis.call('HDEL', batch_key, 'done_at')
redis.call('ZREM', done_key, a.batch_id)
local clock = tonumber(redis.call('GET', clock_key) or '0')
local base_field = 'wait_base:' .. a.model
local base = tonumber(redis.call('HGET', batch_key, base_field) or '-1')
if base < 0 then
  base = clock
  redis.call('HSET', batch_key, base_field, base)
end
local position = math.max(base + redis.call('HINCRBY', batch_key, 'wait_n:' .. a.model, 1), clock)
redis.call('ZADD', queue_key, 'NX', queue_score(batch_key, position), a.ref)
return ''
