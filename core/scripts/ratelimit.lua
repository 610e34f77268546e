-- Sliding-window log for every tier of one request, atomically: prune, count, and log the request in
-- every window only if every tier has room. A refused request is NOT logged, so retrying while refused
-- never extends the lockout.
-- KEYS[i]   one sorted set per tier (score = Redis time in µs, member unique per request)
-- ARGV[1]   member: unique per call (the caller's process token + counter), so equal times never collide
-- ARGV[2i], ARGV[2i+1]  limit and window (ms) of tier i
-- Returns {allowed, tier index, remaining, wait µs, now µs}:
--   refused: the tier that blocks longest, 0, µs until its blocking entry leaves the window (exact)
--   allowed: the tier with the fewest requests left, that number, µs until its oldest entry leaves
-- Redis TIME is the only clock: API nodes whose clocks disagree still share one timeline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local windows, lefts = {}, {}
local block, block_at = 0, 0
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1]) * 1000
  windows[i] = window
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  lefts[i] = limit - count - 1
  if count >= limit then
    -- room again when the entry `limit` places from the newest leaves (the oldest, unless the limit
    -- was lowered since those entries were logged)
    local e = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
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
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  -- every entry is older than `now`, so the whole set may go when the newest one leaves its window
  redis.call('PEXPIRE', KEYS[i], math.ceil(windows[i] / 1000))
  if lefts[i] < lefts[best] then
    best = i
  end
end
local oldest = redis.call('ZRANGE', KEYS[best], 0, 0, 'WITHSCORES')
return {1, best, lefts[best], tonumber(oldest[2]) + windows[best] - now, now}
