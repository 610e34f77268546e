-- Park a failed task until its retry is due, on Redis's clock (one clock for every worker).
-- KEYS[1] retry zset; ARGV[1] delay ms, ARGV[2] message
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return now + tonumber(ARGV[1])
