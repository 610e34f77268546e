-- Live feed: take up to ARGV[1] dirty fingerprints and turn them into exact deltas, atomically.
-- KEYS[1] dirty set, KEYS[2] live totals (hash), KEYS[3] emitted totals (hash), KEYS[4] last seen (hash)
-- Returns {now_seconds, fp1, total1, previous1, fp2, ...} for the fingerprints whose total moved.
-- Deltas are taken against the EMITTED total stored here (not against an in-memory copy), so two
-- coalescers overlapping after a lease hand-over still emit disjoint deltas that sum to the exact totals.
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local fps = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
local out = {now}
for _, fp in ipairs(fps) do
  local total = tonumber(redis.call('HGET', KEYS[2], fp) or '0')
  local prev = tonumber(redis.call('HGET', KEYS[3], fp) or '0')
  if total ~= prev then
    redis.call('HSET', KEYS[3], fp, total)
    redis.call('HSET', KEYS[4], fp, now)
    out[#out + 1] = fp
    out[#out + 1] = total
    out[#out + 1] = prev
  end
end
return out
