-- Drop idle groups from the live hashes and the feed (the DB keeps them); bounded by the caller's batch.
-- KEYS[1] live totals, KEYS[2] feed emitted, KEYS[3] feed last seen, KEYS[4] feed group summaries,
-- KEYS[5] feed dirty set, KEYS[6] groups awaiting a rebase; ARGV[1] idle seconds, ARGV[2] per-project feed
-- index key prefix (Keys.feed_index: prefix .. project id, same hash tag), then fingerprints.
-- A group is idle when the coalescer last saw its total move more than ARGV[1] s ago (Redis clock) and it
-- is not dirty (counted but not yet taken). A group the coalescer never saw gets its idle clock started.
-- counts:pending is never touched: its deltas reach the DB through the sync job whatever happens here.
-- A negative ARGV[1]: retention (workers/retention.py) deleted these groups from the DB; drop every one that
-- is not dirty (a dirty one is being counted again, so recreated), whatever its idle clock.
-- Returns {pruned, clocks started}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local force = tonumber(ARGV[1]) < 0
local cutoff = now - tonumber(ARGV[1])
local pruned, started = 0, 0
for i = 3, #ARGV do
  local fp = ARGV[i]
  if redis.call('SISMEMBER', KEYS[5], fp) == 0 then
    local last = redis.call('HGET', KEYS[3], fp)
    if not last and not force then
      if redis.call('HEXISTS', KEYS[1], fp) == 1 then
        redis.call('HSET', KEYS[3], fp, now)
        started = started + 1
      end
    elseif force or tonumber(last) < cutoff then
      redis.call('HDEL', KEYS[1], fp)
      redis.call('HDEL', KEYS[2], fp)
      redis.call('HDEL', KEYS[3], fp)
      local summary = redis.call('HGET', KEYS[4], fp)
      if summary then  -- leave the project's feed index too (what `subscribe` reads)
        local ok, g = pcall(cjson.decode, summary)
        if ok and type(g) == 'table' and g.project_id then
          redis.call('SREM', ARGV[2] .. tostring(g.project_id), fp)
        end
      end
      redis.call('HDEL', KEYS[4], fp)
      redis.call('SREM', KEYS[6], fp)
      pruned = pruned + 1
    end
  end
end
return {pruned, started}
