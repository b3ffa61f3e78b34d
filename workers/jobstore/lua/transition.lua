-- Move one job to another status by compare-and-set, keeping every index that depends on it in the same step.
-- KEYS: job, batch, due index, events stream, counts (jobs by status), inflight (tasks upstream per model),
--       finished jobs, finished batches, the billed totals of the move's UTC day, and, for a move back into
--       line (`requeue`), the model's wait queue and its clock.
-- ARGV[1]: JSON {ref, batch_id, target, sources = [statuses it may come from], terminal = [terminal statuses],
--   expected_attempt (absent: any), bump (claim: advance the attempt), due_at (absent: leave the due index),
--   event (JSON of the job's event, appended when the status changes), maxlen, now, now_iso,
--   fields = {name: value}, requeue (back in the wait queue, at its band's current turn),
--   bill = {units, origin, model, scope = account|model, ttl_s} (what a task that succeeded bills: added to the
--   job, its batch and the day, once per origin: a second record of the same answer adds nothing)}.
-- Returns JSON {code, status, attempt, finished, previous}: code 1 applied, 0 attempt moved on, -1 no such job,
-- -2 the status does not allow the target.
local job_key, batch_key, due_key, events_key, counts_key, inflight_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local finished_key, done_key, billed_key = KEYS[7], KEYS[8], KEYS[9]
local a = cjson.decode(ARGV[1])
local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end
local function reply(code, status, attempt, finished, previous)
  return cjson.encode({code = code, status = status, attempt = attempt, finished = finished, previous = previous})
end

local cur = redis.call('HMGET', job_key, 'status', 'attempt')
if not cur[1] then return reply(-1, '', 0, 0, '') end
local status, attempt = cur[1], tonumber(cur[2] or '0')
if a.expected_attempt ~= nil and tonumber(a.expected_attempt) ~= attempt then
  return reply(0, status, attempt, 0, status)
end
if not set_of(a.sources)[status] then return reply(-2, status, attempt, 0, status) end
if a.bump then attempt = attempt + 1 end
local fields = {'status', a.target, 'attempt', attempt}
for name, value in pairs(a.fields) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', job_key, unpack(fields))
if a.due_at == nil then
  redis.call('ZREM', due_key, a.ref)
  redis.call('HSET', job_key, 'due_at', '')
else
  redis.call('ZADD', due_key, tonumber(a.due_at), a.ref)
  redis.call('HSET', job_key, 'due_at', a.due_at)
end
if a.requeue then
  local clock = tonumber(redis.call('GET', KEYS[11]) or '0')
  redis.call('ZADD', KEYS[10], 'NX', queue_score(batch_key, clock), a.ref)
end
if a.bill ~= nil and redis.call('HGET', job_key, 'billed_origin') ~= a.bill.origin then
  redis.call('HSET', job_key, 'billed_origin', a.bill.origin)
  redis.call('HINCRBYFLOAT', job_key, 'billed_units', a.bill.units)
  redis.call('HINCRBYFLOAT', batch_key, 'billed:' .. a.bill.model, a.bill.units)
  redis.call('HINCRBYFLOAT', billed_key, a.bill.scope, a.bill.units)
  redis.call('EXPIRE', billed_key, a.bill.ttl_s)
end
local finished = 0
if status ~= a.target then
  local terminal = set_of(a.terminal)
  redis.call('HSET', job_key, 't_' .. a.target, a.now)
  redis.call('HINCRBY', batch_key, 'n:' .. status, -1)
  redis.call('HINCRBY', batch_key, 'n:' .. a.target, 1)
  redis.call('HINCRBY', counts_key, status, -1)
  redis.call('HINCRBY', counts_key, a.target, 1)
  local upstream = {submitted = true, running = true, overdue = true}
  if upstream[status] ~= upstream[a.target] then
    local model = redis.call('HGET', job_key, 'model') or 'unknown'
    redis.call('HINCRBY', inflight_key, model, upstream[a.target] and 1 or -1)
  end
  if a.event ~= nil then
    redis.call('XADD', events_key, 'MAXLEN', '~', a.maxlen, '*', 'event', a.event)
  end
  if terminal[a.target] then
    redis.call('HINCRBY', batch_key, 'terminal', 1)
    redis.call('ZADD', finished_key, tonumber(a.now), a.ref)
    finished = finish_batch(batch_key, events_key, done_key, a.batch_id, a.now, a.now_iso, a.maxlen)
  elseif terminal[status] then  -- revived: the batch has a job to wait for again
    redis.call('HINCRBY', batch_key, 'terminal', -1)
    redis.call('HDEL', batch_key, 'done_at')
    redis.call('ZREM', finished_key, a.ref)
    redis.call('ZREM', done_key, a.batch_id)
  end
end
return reply(1, a.target, attempt, finished, status)
