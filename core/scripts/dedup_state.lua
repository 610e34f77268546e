-- Job state of remembered events (core/dedup.py): read it, or set it keeping the writer's token.
-- KEYS[1] dedup meta hash; ARGV[1] dedup key prefix, ARGV[2] dedup TTL s, ARGV[3] buckets per TTL,
-- ARGV[4] 'get' or 'set', ARGV[5] state code (set), then per event: dedup seed, dedup digest.
-- get: one value per event (token * 8 + state), false when not remembered; set: how many were updated.
-- Only entries that exist are updated: a state never resurrects an expired (or never counted) event.
local FIXED_ARGS = 5
local t = redis.call('TIME')
local ttl, nb = tonumber(ARGV[2]), tonumber(ARGV[3])
local len = math.ceil(ttl / nb)
local cur = math.floor(tonumber(t[1]) / len)
local shards = {}
for b = cur - nb, cur do
  local s = redis.call('HGET', KEYS[1], 's:' .. b)
  if s then shards[b] = tonumber(s) end
end
local function find(seed, digest)
  for b = cur, cur - nb, -1 do
    local s = shards[b]
    if s then
      local key = ARGV[1] .. b .. ':' .. (seed % s)
      local v = redis.call('HGET', key, digest)
      if v then return key, tonumber(v) end
    end
  end
  return nil, nil
end
local out, updated = {}, 0
local state = tonumber(ARGV[5])
for i = FIXED_ARGS + 1, #ARGV, 2 do
  local key, v = find(tonumber(ARGV[i]), ARGV[i + 1])
  if ARGV[4] == 'get' then
    out[#out + 1] = v or false
  elseif key then
    redis.call('HSET', key, ARGV[i + 1], math.floor(v / 8) * 8 + state)
    updated = updated + 1
  end
end
if ARGV[4] == 'get' then return out end
return updated
