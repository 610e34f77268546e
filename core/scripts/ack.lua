-- Acknowledge and delete many messages of several task streams in one call (core/acks.py): XACK + XDEL per
-- stream, as the pipeline of a single stream does, but ONE command for the client to pack and parse. One
-- server (or Sentinel's primary) only: a read over every key shard's stream is acked in one call instead of
-- 2 commands per stream (16 shards: ~14 commands a flush; issue 12 must-show 6). Redis Cluster acks per stream.
-- KEYS: the streams; ARGV[1] consumer group, then for each KEYS[i]: its id count n, then n message ids.
-- Returns the number of messages acknowledged (XACK's count; deleting an absent id is a no-op).
local CHUNK = 1000  -- ids per XACK/XDEL: unpack() has a stack limit of a few thousand values
local a, acked = 2, 0
for i = 1, #KEYS do
  local n = tonumber(ARGV[a])
  for first = a + 1, a + n, CHUNK do
    local last = math.min(first + CHUNK - 1, a + n)
    acked = acked + redis.call('XACK', KEYS[i], ARGV[1], unpack(ARGV, first, last))
    redis.call('XDEL', KEYS[i], unpack(ARGV, first, last))
  end
  a = a + n + 1
end
return acked
