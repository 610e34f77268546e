-- Included by ratelimit.lua and ingest.lua (core/redis.py resolves `--#include`): the exact sliding-window log
-- of ONE request over its tiers, atomically: prune, count, and log the request in every window only if every
-- tier has room. A refused request is NOT logged, so retrying while refused never extends the lockout.
-- keys[i] one sorted set per tier (score = Redis time in µs, member unique per request); limits[i], windows
-- in ms; now = Redis TIME in µs (the only clock: API nodes whose clocks disagree still share one timeline).
-- `rerun`: the call may be the re-run of a call whose reply was lost (ingest.lua): a member already in the
-- first window was admitted by that run, and is answered as admitted without being logged again.
-- `seen`: {} shared by the requests of one script call (ingest.lua checks many per call, all at the same
-- `now`), nil for one request per call (ratelimit.lua). Pruning a key again at the same `now` removes
-- nothing, so its count and oldest score are kept there after the first request instead of re-read, and
-- its expiry is set once: 2 commands per tier for each further request of a client instead of 5 (one client
-- sends many requests per call under load). The answers are those of one call per request.
-- `frozen`: only report (ingest.lua: an earlier run of the call counted): a member not logged is refused,
-- and nothing is logged.
-- Returns {allowed, tier index, remaining, wait µs, now µs}:
--   refused: the tier that blocks longest, 0, µs until its blocking entry leaves the window (exact)
--   allowed: the tier with the fewest requests left, that number, µs until its oldest entry leaves
local function window_of(key, now, window, seen)
  local w = seen and seen[key]
  if w then return w end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  w = {count = redis.call('ZCARD', key), oldest = nil, expiring = false}
  if seen then seen[key] = w end
  return w
end

local function sliding_window(keys, member, limits, windows_ms, now, rerun, seen, frozen)
  local n = #keys
  local logged = rerun and redis.call('ZSCORE', keys[1], member) ~= false
  local windows, lefts, states = {}, {}, {}
  local block, block_at = 0, 0
  for i = 1, n do
    local limit = limits[i]
    local window = windows_ms[i] * 1000
    windows[i] = window
    local w = window_of(keys[i], now, window, seen)
    states[i] = w
    local count = w.count
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
  if frozen and not logged then  -- the counting run refused it (its exact wait is gone: 1 s)
    return {0, 1, 0, 1000000, now}
  end
  local best = 1
  for i = 1, n do
    if not logged then
      local w = states[i]
      redis.call('ZADD', keys[i], now, member)
      w.count = w.count + 1
      if not w.expiring then
        -- every entry is older than `now`, so the whole set may go when the newest one leaves its window
        redis.call('PEXPIRE', keys[i], math.ceil(windows[i] / 1000))
        w.expiring = true
      end
    end
    if lefts[i] < lefts[best] then
      best = i
    end
  end
  local w = states[best]
  if w.oldest == nil then
    -- read once per key and call (the set holds this request's entry by now): later entries of this call
    -- all score `now`, so they never change which one is oldest
    local oldest = redis.call('ZRANGE', keys[best], 0, 0, 'WITHSCORES')
    w.oldest = tonumber(oldest[2])
  end
  return {1, best, math.max(lefts[best], 0), w.oldest + windows[best] - now, now}
end
