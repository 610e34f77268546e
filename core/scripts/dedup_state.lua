-- Job state of remembered events (core/dedup.py): read it, or set it keeping the writer's token.
-- KEYS[j]: the dedup meta hash of key shard j: one per call on Redis Cluster (one slot per call), every
-- shard's in ONE call on one server (the batch writer sets two states per batch: 16 shards cost one call).
-- ARGV[1] dedup TTL s, ARGV[2] buckets per TTL, ARGV[3] 'get' or 'set', ARGV[4] state code (set), then for
-- each KEYS[j] in order: its dedup key prefix, its number of events n, then n times: dedup seed, digest.
-- get: one value per event and shard, in order (token * 8 + state), false when not remembered there;
-- set: how many were updated. Only entries that exist and are in the window are updated: a state never
-- resurrects an expired (or never counted) event.
--#include _dedup.lua
local t = redis.call('TIME')
local ttl, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local get, state = ARGV[3] == 'get', tonumber(ARGV[4])
local out, updated = {}, 0
local a = 5
for j = 1, #KEYS do
  local d = dedup_open(ARGV[a], KEYS[j], ttl, nb, tonumber(t[1]))
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    local seed, digest = tonumber(ARGV[a]), ARGV[a + 1]
    a = a + 2
    local key, v = dedup_locate(d, seed, digest, false)
    if get then
      out[#out + 1] = v and (math.floor(v / (8 * DD_BMOD)) * 8 + v % 8) or false
    elseif key then
      redis.call('HSET', key, digest, math.floor(v / 8) * 8 + state)  -- token and bucket kept
      updated = updated + 1
    end
  end
end
if get then return out end
return updated
