-- Included by ratelimit.lua and ingest.lua (core/redis.py resolves `--#include`): the exact sliding-window log
-- of ONE request over its tiers, atomically: prune, count, and log the request in every window only if every
-- tier has room. A refused request is NOT logged, so retrying while refused never extends the lockout.
-- keys[i] one sorted set per tier (score = Redis time in µs, member unique per request); limits[i], windows
-- in ms; now = Redis TIME in µs (the only clock: API nodes whose clocks disagree still share one timeline).
-- `rerun`: the call may be the re-run of a call whose reply was lost (ingest.lua): a member already in the
-- first window was admitted by that run, and is answered as admitted without being logged again.
-- Returns {allowed, tier index, remaining, wait µs, now µs}:
--   refused: the tier that blocks longest, 0, µs until its blocking entry leaves the window (exact)
--   allowed: the tier with the fewest requests left, that number, µs until its oldest entry leaves
local function sliding_window(keys, member, limits, windows_ms, now, rerun)
  local n = #keys
  local logged = rerun and redis.call('ZSCORE', keys[1], member) ~= false
  local windows, lefts = {}, {}
  local block, block_at = 0, 0
  for i = 1, n do
    local limit = limits[i]
    local window = windows_ms[i] * 1000
    windows[i] = window
    redis.call('ZREMRANGEBYSCORE', keys[i], '-inf', now - window)
    local count = redis.call('ZCARD', keys[i])
    if logged then count = count - 1 end  -- this request's own entry, logged by the earlier run
    lefts[i] = limit - count - 1
    if count >= limit and not logged then
      -- room again when the entry `limit` places from the newest leaves (the oldest, unless the limit
      -- was lowered since those entries were logged)
      local e = redis.call('ZRANGE', keys[i], count - limit, count - limit, 'WITHSCORES')
      local free_at = tonumber(e[2]) + window
      if free_at > block_at then
        block, block_at = i, free_at
      end
    end
  end
  if block > 0 then
    return {0, block, 0, block_at - now, now}
  end
  local best = 1
  for i = 1, n do
    if not logged then
      redis.call('ZADD', keys[i], now, member)
      -- every entry is older than `now`, so the whole set may go when the newest one leaves its window
      redis.call('PEXPIRE', keys[i], math.ceil(windows[i] / 1000))
    end
    if lefts[i] < lefts[best] then
      best = i
    end
  end
  local oldest = redis.call('ZRANGE', keys[best], 0, 0, 'WITHSCORES')
  return {1, best, math.max(lefts[best], 0), tonumber(oldest[2]) + windows[best] - now, now}
end
