-- One feed tick's alert inputs (core/alerts/signals.py): per-minute counts for threshold rules, and signals.
-- KEYS[1] signal stream, KEYS[2] project id -> longest threshold window (minutes)
-- ARGV[1] minute-counter key prefix (Keys.alert_minutes_prefix: same hash tag), ARGV[2] stream MAXLEN (~),
-- ARGV[3] number of (project id, fingerprint, delta) triples that follow, then (kind, project id,
-- fingerprint, count or '') quads. Minutes are Redis-clock minutes, as the threshold scan reads them.
-- Returns the number of signals added.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(tonumber(t[1]) / 60)
local n = tonumber(ARGV[3])
local ttl = {}
for i = 0, n - 1 do
  local pid, fp, delta = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if ttl[pid] == nil then ttl[pid] = (tonumber(redis.call('HGET', KEYS[2], pid) or '0') + 2) * 60 end
  if ttl[pid] > 120 then
    local key = ARGV[1] .. pid .. ':' .. minute
    if redis.call('HINCRBY', key, fp, delta) == tonumber(delta) then redis.call('EXPIRE', key, ttl[pid]) end
  end
end
local added = 0
for i = 4 + 3 * n, #ARGV, 4 do
  local entry = {'kind', ARGV[i], 'project_id', ARGV[i + 1], 'fingerprint', ARGV[i + 2], 'at', now_ms}
  if ARGV[i + 3] ~= '' then
    entry[#entry + 1] = 'count'
    entry[#entry + 1] = ARGV[i + 3]
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
  added = added + 1
end
return added
