"""The job store's Lua scripts: each one change of state, atomic on the Redis server.

Kept apart from `store.py` so that the Python reads as the protocol and the Lua as the mechanism.
"""

# Shared by the scripts below: when a sealed batch has every job terminal, stamp it done (once) and
# append its CloudEvent. KEYS: batch hash, events stream. Returns 1 when this call finished the batch.
_FINISH_BATCH = """
local function finish_batch(batch_key, events_key, batch_id, now, now_iso, maxlen)
  local b = redis.call('HMGET', batch_key, 'sealed', 'total', 'terminal', 'done_at')
  if b[1] ~= '1' or b[4] or tonumber(b[2] or '0') ~= tonumber(b[3] or '0') then return 0 end
  redis.call('HSET', batch_key, 'done_at', now)
  local flat = redis.call('HGETALL', batch_key)
  local counts = {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'n:' and tonumber(flat[i + 1]) ~= 0 then
      counts[string.sub(flat[i], 3)] = tonumber(flat[i + 1])
    end
  end
  local data = {batch_id = batch_id, total = tonumber(b[2] or '0'),
                rejected = tonumber(redis.call('HGET', batch_key, 'rejected') or '0'), counts = counts}
  local event = {specversion = '1.0', id = 'batch/' .. batch_id .. '/finished/' .. now, source = 'genq',
                 type = 'genq.batch.finished', subject = batch_id, time = now_iso,
                 datacontenttype = 'application/json', data = data}
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', cjson.encode(event))
  return 1
end
"""

# KEYS: job, batch, batch_jobs, batches, counts (all jobs by status), wait queue of the model, its clock.
# ARGV: ref, job_id, line, now, model, then field/value pairs of the new record.
# The job waits for a slot in its model's queue (not in the due index). Its score puts it in its batch's
# priority band (9 - priority) and, within the band, at a fair position: a batch's jobs count on from the
# queue's clock when the batch first queued for the model, so batches of one band take turns.
CREATE_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'status')
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), ARGV[2])
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('HINCRBY', KEYS[2], 'n:' .. redis.call('HGET', KEYS[1], 'status'), 1)
redis.call('HINCRBY', KEYS[5], redis.call('HGET', KEYS[1], 'status'), 1)
redis.call('HDEL', KEYS[2], 'done_at')
local clock = tonumber(redis.call('GET', KEYS[7]) or '0')
local base_field = 'wait_base:' .. ARGV[5]
local base = tonumber(redis.call('HGET', KEYS[2], base_field) or '-1')
if base < 0 then
  base = clock
  redis.call('HSET', KEYS[2], base_field, base)
end
local position = math.max(base + redis.call('HINCRBY', KEYS[2], 'wait_n:' .. ARGV[5], 1), clock)
local band = 9 - tonumber(redis.call('HGET', KEYS[2], 'priority') or '5')
redis.call('ZADD', KEYS[6], 'NX', band * 1e12 + position, ARGV[1])
return ''
"""

# Put an accepted job back in its model's queue, at the front of its band's current turn (a revived job, or
# one the recovery sweep found waiting outside the queue). KEYS: batch, wait queue, clock. ARGV: ref.
REQUEUE = """
local clock = tonumber(redis.call('GET', KEYS[3]) or '0')
local band = 9 - tonumber(redis.call('HGET', KEYS[1], 'priority') or '5')
return redis.call('ZADD', KEYS[2], 'NX', band * 1e12 + clock, ARGV[1])
"""

# A job was admitted from the queue: move the queue's clock up to its position. KEYS: clock. ARGV: position.
ADVANCE_CLOCK = """
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS: job, batch, due, events, counts (all jobs by status), inflight (tasks upstream per model)
# ARGV: 1 ref, 2 expected attempt ('' = any), 3 bump attempt (0/1), 4 target status,
#       5 allowed source statuses (space separated), 6 terminal (0/1), 7 now (epoch s), 8 now (ISO),
#       9 due_at ('' = not due: remove from the due set), 10 job event JSON ('' = none; appended when the
#       status changes: every terminal one, and `overdue`), 11 stream maxlen,
#       12 batch id, 13.. field/value pairs to set.
# Returns {code, status, attempt, batch_finished, previous status}: code 1 applied, 0 attempt moved on,
# -1 no such job, -2 status does not allow the target.
TRANSITION = (
    _FINISH_BATCH
    + """
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if not cur[1] then return {-1, '', 0, 0, ''} end
local status, attempt = cur[1], tonumber(cur[2] or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= attempt then return {0, status, attempt, 0, status} end
if not string.find(' ' .. ARGV[5] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {-2, status, attempt, 0, status}
end
if ARGV[3] == '1' then attempt = attempt + 1 end
local fields = {'status', ARGV[4], 'attempt', attempt}
for i = 13, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[9] == '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HSET', KEYS[1], 'due_at', '')
else
  redis.call('ZADD', KEYS[3], tonumber(ARGV[9]), ARGV[1])
  redis.call('HSET', KEYS[1], 'due_at', ARGV[9])
end
local finished = 0
if status ~= ARGV[4] then
  redis.call('HSET', KEYS[1], 't_' .. ARGV[4], ARGV[7])
  redis.call('HINCRBY', KEYS[2], 'n:' .. status, -1)
  redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[4], 1)
  redis.call('HINCRBY', KEYS[5], status, -1)
  redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
  local upstream = {submitted = true, running = true, overdue = true}
  if upstream[status] ~= upstream[ARGV[4]] then
    local model = redis.call('HGET', KEYS[1], 'model') or 'unknown'
    redis.call('HINCRBY', KEYS[6], model, upstream[ARGV[4]] and 1 or -1)
  end
  if ARGV[10] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[11], '*', 'event', ARGV[10])
  end
  if ARGV[6] == '1' then
    redis.call('HINCRBY', KEYS[2], 'terminal', 1)
    finished = finish_batch(KEYS[2], KEYS[4], ARGV[12], ARGV[7], ARGV[8], ARGV[11])
  end
end
return {1, ARGV[4], attempt, finished, status}
"""
)

# Pause an account and announce it, in one step (a crash between the two would leave a pause no event told
# of). KEYS: paused hash, events stream. ARGV: account, pause record JSON, event JSON, stream maxlen.
# Returns 1 when this call paused it, 0 when it already was.
PAUSE_ACCOUNT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
return 1
"""

# A stage of the job raised something unexpected: count it on the job, if the job exists. KEYS: job.
# Returns the count (0: no such job).
COUNT_CRASH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'stage_crashes', 1)
"""

# KEYS: batch, events. ARGV: batch id, now, now ISO, maxlen. Returns 1 when the batch is finished by it.
SEAL_BATCH = (
    _FINISH_BATCH
    + """
redis.call('HSET', KEYS[1], 'sealed', '1')
return finish_batch(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# Bring an ended job back for another try (`genq retry`). KEYS: job, batch, due, counts.
# ARGV: ref, now, statuses that may be revived (space separated). Returns 1 when revived.
REVIVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(' ' .. ARGV[3] .. ' ', ' ' .. status .. ' ', 1, true) then return 0 end
redis.call('HINCRBY', KEYS[2], 'n:' .. status, -1)
redis.call('HINCRBY', KEYS[2], 'n:accepted', 1)
redis.call('HINCRBY', KEYS[2], 'terminal', -1)
redis.call('HINCRBY', KEYS[4], status, -1)
redis.call('HINCRBY', KEYS[4], 'accepted', 1)
redis.call('HDEL', KEYS[2], 'done_at')
redis.call('HINCRBY', KEYS[1], 'retries', 1)
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'status', 'accepted', 'next_action', 'admit', 'due_at', ARGV[2], 't_accepted', ARGV[2],
           'task_id', '', 'create_pending', '0', 'submit_errors', '0', 'poll_errors', '0', 'finalize_errors', '0',
           'submits', '0', 'error_code', '', 'error_message', '', 'results', '[]', 'at_risk', '0',
           'task_status', '', 'unknown_seen', '0', 'unknown_first_at', '', 'cancel_refusals', '0',
           'stage_crashes', '0')
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]), ARGV[1])
return 1
"""
