-- Move due retries back onto the task stream. ZREM decides who moves an entry, so any number of
-- workers can pump at once without duplicating a task.
-- KEYS[1] retry zset, KEYS[2] task stream; ARGV[1] max entries
-- Returns {moved, ms until the next retry is due (-1 = none waiting)}: the pump sleeps that long at most.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, msg in ipairs(due) do
  if redis.call('ZREM', KEYS[1], msg) == 1 then
    redis.call('XADD', KEYS[2], '*', 'data', msg)
    moved = moved + 1
  end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next_due[2] then
  return {moved, math.max(0, tonumber(next_due[2]) - now)}
end
return {moved, -1}
