-- Included by ratelimit.lua and ingest.lua (core/redis.py resolves `--#include`): the exact sliding-window log
-- of ONE request over its tiers, atomically: prune, count, and log the request in every window only if every
-- tier has room. A refused request is NOT logged, so retrying while refused never extends the lockout.
-- keys[i] one sorted set per tier (score = Redis time in µs, member unique per request); limits[i], windows
-- in ms; now = Redis TIME in µs (the only clock: API nodes whose clocks disagree still share one timeline).
-- `rerun`: the call may be the re-run of a call whose reply was lost (ingest.lua): a member already in the
-- first window was admitted by that run, and is answered as admitted without being logged again.
-- `seen`: {} shared by the requests of one script call (ingest.lua checks many per call, all at the same
-- `now`; ratelimit.lua one). Pruning a key again at the same `now` removes nothing, so its count and oldest
-- score are kept there after the first request instead of re-read: 2 commands per tier for each further
-- request of a client instead of 5 (one client sends many requests per call under load). The members a call
-- admits are logged at its end, ONE ZADD (and PEXPIRE) per key for all of them (sliding_window_flush, which
-- the script calls): a client's requests of one call all score `now`, so the set's order is the same as with
-- a ZADD each. The answers are those of one call per request.
-- `frozen`: only report (ingest.lua: an earlier run of the call counted): a member not logged is refused,
-- and nothing is logged.
-- Returns {allowed, tier index, remaining, wait µs, now µs}:
--   refused: the tier that blocks longest, 0, µs until its blocking entry leaves the window (exact)
--   allowed: the tier with the fewest requests left, that number, µs until its oldest entry leaves
local function window_of(key, now, window, seen)
  local w = seen[key]
  if w then return w end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  w = {count = redis.call('ZCARD', key), oldest = nil}
  seen[key] = w
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
      -- was lowered since those entries were logged); past the set's end it is one of this call's own,
      -- not logged yet, which score `now`
      local free_at = now + window
      if count - limit < w.count - (w.add and #w.add / 2 or 0) then
        local e = redis.call('ZRANGE', keys[i], count - limit, count - limit, 'WITHSCORES')
        free_at = tonumber(e[2]) + window
      end
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
      local add = w.add  -- logged by sliding_window_flush at the end of the call
      if not add then
        add = {}
        w.add, w.ttl_ms = add, math.ceil(windows[i] / 1000)
      end
      add[#add + 1] = now
      add[#add + 1] = member
      w.count = w.count + 1
    end
    if lefts[i] < lefts[best] then
      best = i
    end
  end
  local w = states[best]
  if w.oldest == nil then
    -- read once per key and call: entries of this call all score `now`, so they never change which one is
    -- oldest; a set empty before this call (its entries not logged yet) has this request's as the oldest
    local oldest = redis.call('ZRANGE', keys[best], 0, 0, 'WITHSCORES')
    w.oldest = tonumber(oldest[2]) or now
  end
  return {1, best, math.max(lefts[best], 0), w.oldest + windows[best] - now, now}
end

-- Log what sliding_window admitted with `seen`: one ZADD per key (in slices, within Lua's unpack limit),
-- then its expiry: every entry is older than or at `now`, so the set may go when the newest leaves its window.
local function sliding_window_flush(seen)
  for key, w in pairs(seen) do
    local add = w.add
    if add then
      for first = 1, #add, 1000 do
        redis.call('ZADD', key, unpack(add, first, math.min(first + 999, #add)))
      end
      redis.call('PEXPIRE', key, w.ttl_ms)
      w.add = nil
    end
  end
end
