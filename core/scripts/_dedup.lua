-- Remembered event ids (core/dedup.py says why this layout), shared by ingest.lua and dedup_state.lua.
-- An id lives in ONE hash of its generation: <prefix>g<G>:<seed % S_G>, field = digest, value =
-- ((token * 128 + written bucket % 128) * 8 + state). A generation is `nb` buckets of ceil(ttl / nb) s, so
-- the window (the current bucket and the nb before it) spans this generation and the one before: a lookup
-- reads at most 2 hashes, whatever nb (the bucket-per-hash layout read nb + 1: x2.1 the script's time per
-- event once the window was full, loadtest/dedup_cost.py). An entry is valid while its bucket is in the
-- window; the previous generation's expired entries are swept by the lookups that read their hash.
-- Meta hash fields: gs:<G> = S_G (sized when G is first written, from the generation before), gn:<G> = ids
-- written in G, gf:<G> = the bucket of G's first write.
local DD_TARGET, DD_MIN_SHARDS, DD_MAX_SHARDS = 64, 256, 1048576
local DD_BMOD = 128  -- buckets kept in a value: the window plus a generation is 2 nb + 1 <= 121 buckets

local function dedup_open(prefix, meta, ttl, nb, now_s)
  local len = math.ceil(ttl / nb)
  local cur = math.floor(now_s / len)
  local gen = math.floor(cur / nb)
  local m = redis.call('HMGET', meta, 'gs:' .. gen, 'gs:' .. (gen - 1), 'gn:' .. (gen - 1), 'gf:' .. (gen - 1))
  local prev_shards, prev_ids = tonumber(m[2]), tonumber(m[3] or '1')
  -- A hash of the previous generation is read by ~ids/nb/S lookups a bucket: sweeping on a share of them
  -- makes it ~2 sweeps per hash and bucket (so expired ids linger ~half a bucket) at ~2 nb entries read per
  -- new id, whatever the rate (a few ids per hash at a low rate: every lookup sweeps its small hash).
  local share = prev_shards and math.min(1, 2 * nb * prev_shards / math.max(1, prev_ids)) or 0
  -- No sweep while nothing there can have expired: its oldest id was written in its first bucket (gf), valid
  -- until nb buckets later. Each sweep reads a whole hash; after a start part-way through a generation (a
  -- deploy, a restart) they found nothing for up to a whole window: a 1,000-user soak ran 12,800 HGETALLs of
  -- ~1,000 ids, 3.6 s of Redis, that deleted nothing (loadtest/reports, redis commandstats).
  local first = tonumber(m[4])
  if first and cur - first <= nb then share = 0 end
  return {prefix = prefix .. 'g', meta = meta, len = len, nb = nb, cur = cur, gen = gen,
          shards = {[gen] = tonumber(m[1]), [gen - 1] = prev_shards}, expiring = {}, written = 0,
          sweep_below = math.ceil(256 * share)}
end

local function dedup_valid(d, raw)
  return (d.cur - math.floor(raw / 8) % DD_BMOD) % DD_BMOD <= d.nb
end

-- Drop the expired entries of one hash of the previous generation. Called for a share of the lookups
-- there (sweep_below: the digest's first byte decides, ids are uniform).
local function dedup_sweep(d, key)
  local all = redis.call('HGETALL', key)
  local stale = {}
  for i = 1, #all, 2 do
    if not dedup_valid(d, tonumber(all[i + 1])) then stale[#stale + 1] = all[i] end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
end

-- The hash holding a remembered id and its raw value, or nil (never remembered, or expired)
local function dedup_locate(d, seed, digest, sweep)
  for g = d.gen, d.gen - 1, -1 do
    local s = d.shards[g]
    if s then
      local key = d.prefix .. g .. ':' .. (seed % s)
      local v = redis.call('HGET', key, digest)
      if g < d.gen and sweep and string.byte(digest, 1) < d.sweep_below then dedup_sweep(d, key) end
      if v then
        v = tonumber(v)
        if g == d.gen or dedup_valid(d, v) then return key, v end
      end
    end
  end
  return nil
end

-- token * 8 + state of a remembered id, or nil
local function dedup_find(d, seed, digest)
  local _, v = dedup_locate(d, seed, digest, true)
  if v then return math.floor(v / (8 * DD_BMOD)) * 8 + v % 8 end
  return nil
end

-- Remember an id (value = token * 8 + state) in the current generation
local function dedup_put(d, seed, digest, value)
  local s = d.shards[d.gen]
  if not s then  -- first write of this generation: size it on the one before (listpacks of ~64 ids),
    -- scaled up to a whole generation when that one was written for part of it only (a start mid-way)
    local c = redis.call('HMGET', d.meta, 'gn:' .. (d.gen - 1), 'gf:' .. (d.gen - 1))
    local prev = tonumber(c[1] or '0')
    if c[2] then prev = prev * d.nb / math.max(1, d.gen * d.nb - tonumber(c[2])) end
    s = DD_MIN_SHARDS
    while s * DD_TARGET < prev and s < DD_MAX_SHARDS do s = s * 2 end
    redis.call('HSET', d.meta, 'gs:' .. d.gen, s, 'gf:' .. d.gen, d.cur)
    for g = d.gen - 3, d.gen - 2 do redis.call('HDEL', d.meta, 'gs:' .. g, 'gn:' .. g, 'gf:' .. g) end
    redis.call('EXPIRE', d.meta, 3 * d.nb * d.len + 2)
    d.shards[d.gen] = s
  end
  local key = d.prefix .. d.gen .. ':' .. (seed % s)
  redis.call('HSET', key, digest, (math.floor(value / 8) * DD_BMOD + d.cur % DD_BMOD) * 8 + value % 8)
  d.written = d.written + 1
  if not d.expiring[key] then  -- the hash outlives its newest entry's window by at most a second
    redis.call('EXPIREAT', key, (d.cur + d.nb + 1) * d.len + 1)
    d.expiring[key] = true
  end
end

-- After a call's writes: the generation's id count (what sizes the next one)
local function dedup_close(d)
  if d.written > 0 then redis.call('HINCRBY', d.meta, 'gn:' .. d.gen, d.written) end
end
