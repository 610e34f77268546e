-- Accept a batch of events atomically: shed load, dedup by event id, count, enqueue.
-- KEYS[1] task stream, KEYS[2] pending deltas (hash), KEYS[3] live totals (hash),
-- KEYS[4] live-feed dirty set, KEYS[5] live-feed group summaries (hash), KEYS[6..] event keys
-- ARGV[1] dedup TTL s, ARGV[2] queue soft limit, ARGV[3] message head, ARGV[4] message tail,
-- then per event: fingerprint, event JSON.
-- Returns {accepted, r1, r2, ...}: r = live total after this event (1 = first sighting) or 0 = duplicate;
-- or {-1, depth} when the queue is over its soft limit (nothing counted).
-- Live feed (core/feed.py): every counted fingerprint is SADDed to the dirty set, which the coalescer drains
-- every 250 ms; on a first sighting a small group summary is stored once (HSETNX) for its error:new.
local FIXED = 5
local function summary(body)
  local ok, ev = pcall(cjson.decode, body)
  if not ok then return nil end
  local msg = tostring(ev.message or '')
  if #msg > 300 then  -- cut at a UTF-8 character boundary (never before a continuation byte)
    local cut = 300
    while cut > 0 and string.byte(msg, cut + 1) >= 128 and string.byte(msg, cut + 1) < 192 do cut = cut - 1 end
    msg = string.sub(msg, 1, cut)
  end
  return cjson.encode({fingerprint = ev.fingerprint, project_id = ev.project_id, service = ev.service,
                       level = ev.level, message = msg, first_seen = ev.received_at})
end
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[2]) then
  return {-1, depth}
end
local ttl = tonumber(ARGV[1])
local bodies = {}
local result = {0}
for i = 1, #KEYS - FIXED do
  local fp = ARGV[3 + 2 * i]
  if redis.call('SET', KEYS[FIXED + i], 'queued', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', KEYS[2], fp, 1)
    local total = redis.call('HINCRBY', KEYS[3], fp, 1)
    result[i + 1] = total
    redis.call('SADD', KEYS[4], fp)
    if total == 1 then
      local s = summary(ARGV[4 + 2 * i])
      if s then redis.call('HSETNX', KEYS[5], fp, s) end
    end
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
