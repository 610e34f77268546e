-- Accept a batch of events atomically: shed load, dedup by event id, count, enqueue.
-- KEYS[1] task stream, KEYS[2] pending deltas (hash), KEYS[3] live totals (hash), KEYS[4..] event keys
-- ARGV[1] dedup TTL s, ARGV[2] queue soft limit, ARGV[3] message head, ARGV[4] message tail,
-- then per event: fingerprint, event JSON.
-- Returns {accepted, r1, r2, ...}: r = live total after this event (1 = first sighting) or 0 = duplicate;
-- or {-1, depth} when the queue is over its soft limit (nothing counted).
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[2]) then
  return {-1, depth}
end
local ttl = tonumber(ARGV[1])
local bodies = {}
local result = {0}
for i = 1, #KEYS - 3 do
  local fp = ARGV[3 + 2 * i]
  if redis.call('SET', KEYS[3 + i], 'queued', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', KEYS[2], fp, 1)
    result[i + 1] = redis.call('HINCRBY', KEYS[3], fp, 1)
    bodies[#bodies + 1] = ARGV[4 + 2 * i]
  else
    result[i + 1] = 0
  end
end
if #bodies > 0 then
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[3] .. table.concat(bodies, ',') .. ARGV[4])
end
result[1] = #bodies
return result
