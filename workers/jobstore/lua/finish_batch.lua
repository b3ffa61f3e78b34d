-- Shared by transition.lua and seal_batch.lua (prepended to them): when a sealed batch has every job
-- terminal, stamp it done (once), index it among the finished batches (what the purge reads) and append its
-- CloudEvent. Returns 1 when this call finished the batch.
local function finish_batch(batch_key, events_key, done_key, batch_id, now, now_iso, maxlen)
  local b = redis.call('HMGET', batch_key, 'sealed', 'total', 'terminal', 'done_at')
  if b[1] ~= '1' or b[4] or tonumber(b[2] or '0') ~= tonumber(b[3] or '0') then return 0 end
  redis.call('HSET', batch_key, 'done_at', now)
  redis.call('ZADD', done_key, tonumber(now), batch_id)
  local flat = redis.call('HGETALL', batch_key)
  local counts, billed = {}, {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'n:' and tonumber(flat[i + 1]) ~= 0 then
      counts[string.sub(flat[i], 3)] = tonumber(flat[i + 1])
    elseif string.sub(flat[i], 1, 7) == 'billed:' and tonumber(flat[i + 1]) ~= 0 then
      billed[string.sub(flat[i], 8)] = tonumber(flat[i + 1])
    end
  end
  local data = {batch_id = batch_id, total = tonumber(b[2] or '0'),
                rejected = tonumber(redis.call('HGET', batch_key, 'rejected') or '0'), counts = counts,
                billed = billed}
  local event = {specversion = '1.0', id = 'batch/' .. batch_id .. '/finished/' .. now, source = 'genq',
                 type = 'genq.batch.finished', subject = batch_id, time = now_iso,
                 datacontenttype = 'application/json', data = data}
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'event', cjson.encode(event))
  return 1
end

-- A job's place in its model's wait queue: its batch's priority band (9 - priority), then `position`.
local function queue_score(batch_key, position)
  local band = 9 - tonumber(redis.call('HGET', batch_key, 'priority') or '5')
  return band * 1e12 + position
end
