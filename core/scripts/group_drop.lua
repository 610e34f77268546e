-- Forget groups the DB has just deleted for retention (workers/retention.py): live totals, feed state,
-- feed summary and the project's feed index. A group counted since (dirty, or live again) is left alone:
-- it is being recreated. counts:pending is never touched (its deltas reach the DB through the sync).
-- KEYS[1] live totals, KEYS[2] feed emitted, KEYS[3] feed last seen, KEYS[4] feed group summaries,
-- KEYS[5] feed dirty set, KEYS[6] groups awaiting a rebase; ARGV[1] per-project feed index key prefix,
-- then fingerprints. Returns the number of groups dropped.
local dropped = 0
for i = 2, #ARGV do
  local fp = ARGV[i]
  if redis.call('SISMEMBER', KEYS[5], fp) == 0 then
    local summary = redis.call('HGET', KEYS[4], fp)
    if summary then
      local ok, g = pcall(cjson.decode, summary)
      if ok and type(g) == 'table' and g.project_id then
        redis.call('SREM', ARGV[1] .. tostring(g.project_id), fp)
      end
    end
    redis.call('HDEL', KEYS[1], fp)
    redis.call('HDEL', KEYS[2], fp)
    redis.call('HDEL', KEYS[3], fp)
    redis.call('HDEL', KEYS[4], fp)
    redis.call('SREM', KEYS[6], fp)
    dropped = dropped + 1
  end
end
return dropped
