-- Set the live total of groups new to the live hash (first sighting, or back after being pruned) to the
-- exact total: DB count (read by the caller right after a completed sync) + deltas still pending.
-- KEYS[1] live totals, KEYS[2] pending deltas, KEYS[3] feed emitted, KEYS[4] groups awaiting a rebase
-- ARGV: fingerprint, DB count, fingerprint, DB count, ...
-- Only raises a total (a lower "exact" means the DB lacks a batch not applied yet: try next time). The
-- emitted total moves with it, so the feed shows no made-up delta; the next event emits the exact total.
-- Returns the number of groups rebased.
local n = 0
for i = 1, #ARGV, 2 do
  local fp = ARGV[i]
  if redis.call('SREM', KEYS[4], fp) == 1 then
    local live = redis.call('HGET', KEYS[1], fp)
    if live then
      local exact = tonumber(ARGV[i + 1]) + tonumber(redis.call('HGET', KEYS[2], fp) or '0')
      local diff = exact - tonumber(live)
      if diff > 0 then
        redis.call('HINCRBY', KEYS[1], fp, diff)
        if redis.call('HEXISTS', KEYS[3], fp) == 1 then redis.call('HINCRBY', KEYS[3], fp, diff) end
        n = n + 1
      elseif diff < 0 then
        redis.call('SADD', KEYS[4], fp)
      end
    end
  end
end
return n
