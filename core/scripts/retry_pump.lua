-- Move due retries back onto the task stream. ZREM decides who moves an entry, so any number of
-- workers can pump at once without duplicating a task.
-- KEYS: pairs of (retry zset, its task stream): one pair per call on Redis Cluster (one slot per call),
-- every key shard's pair in ONE call on one server (core/retry.py: 16 shards cost one call, not 16).
-- ARGV[1] max entries per pair.
-- Returns {moved, ms until the next retry is due (-1 = none waiting)}: the pump sleeps that long at most.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
local next_in = -1
for i = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, msg in ipairs(due) do
    if redis.call('ZREM', KEYS[i], msg) == 1 then
      redis.call('XADD', KEYS[i + 1], '*', 'data', msg)
      moved = moved + 1
    end
  end
  local next_due = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if next_due[2] then
    local wait = math.max(0, tonumber(next_due[2]) - now)
    if next_in < 0 or wait < next_in then
      next_in = wait
    end
  end
end
return {moved, next_in}
