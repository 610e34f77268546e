-- The rate limiter's own call (api/ratelimit.py; routes whose limiter is not folded into ingest.lua):
-- KEYS[i] one sorted set per tier; ARGV[1] member, unique per call (the caller's process token + counter);
-- ARGV[2i], ARGV[2i+1] limit and window (ms) of tier i. The algorithm: _sliding_window.lua.
--#include _sliding_window.lua
local t = redis.call('TIME')
local limits, windows = {}, {}
for i = 1, #KEYS do
  limits[i] = tonumber(ARGV[2 * i])
  windows[i] = tonumber(ARGV[2 * i + 1])
end
local seen = {}
local decision = sliding_window(KEYS, ARGV[1], limits, windows, tonumber(t[1]) * 1000000 + tonumber(t[2]), false,
                                seen)
sliding_window_flush(seen)
return decision
