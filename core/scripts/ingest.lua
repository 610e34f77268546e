-- Accept a batch of events atomically: refuse if late, dedup by (project, event id), shed load, count, enqueue.
-- KEYS[1] task stream, KEYS[2] pending deltas (hash), KEYS[3] live totals (hash), KEYS[4] live-feed dirty set,
-- KEYS[5] live-feed group summaries (hash), KEYS[6] dedup meta (hash), KEYS[7] groups new to the live hash (set)
-- ARGV[1] dedup key prefix, ARGV[2] dedup TTL s, ARGV[3] dedup buckets per TTL, ARGV[4] queue soft limit,
-- ARGV[5] message head, ARGV[6] message tail, ARGV[7] call token, ARGV[8] deadline in Redis ms (0 = none),
-- then per event: dedup seed, dedup digest, fingerprint, event JSON (core/dedup.py).
-- Returns {status, redis_ms, r1, r2, ...}:
--   status 0 = done; r = live total after this event (1 = first sighting), 0 = duplicate of another call's
--   event, -1 = counted by an earlier run of THIS call (same token: the caller lost that run's reply);
--   status -1 = queue over its soft limit, r1 = depth (nothing counted);
--   status -2 = the call arrived after its deadline (nothing counted: the caller has given up or will).
-- Dedup buckets are per-time hashes whose names are built here from ARGV[1]: every one of them carries the
-- same {hash tag} as KEYS, so the script stays single-slot on Redis Cluster.
-- Live feed (core/feed.py): every counted fingerprint is SADDed to the dirty set, which the coalescer drains
-- every 250 ms; on a first sighting a small group summary is stored once (HSETNX) for its error:new, and the
-- fingerprint is noted in KEYS[7] so the scheduler rebases its live total on the DB's (workers/prune.py).
-- [limits: per-project quota / new-group cap checks go in the "admission" section below]
local FIXED_ARGS, PER_EVENT = 8, 4
-- ids per shard hash: 64 stays under hash-max-listpack-entries (128 by default) with Poisson headroom;
-- at least 256 shards, so a bucket after a quiet spell still holds ~16,000 ids in listpacks (an empty
-- shard costs nothing; 256 x 11 small hashes are ~0.3 MB when every one is in use)
local SHARD_TARGET, MIN_SHARDS, MAX_SHARDS = 64, 256, 65536
local QUEUED = 0

local function summary(body)
  local ok, ev = pcall(cjson.decode, body)
  if not ok then return nil end
  local msg = tostring(ev.message or '')
  if #msg > 300 then  -- cut at a UTF-8 character boundary (never before a continuation byte)
    local cut = 300
    while cut > 0 and string.byte(msg, cut + 1) >= 128 and string.byte(msg, cut + 1) < 192 do cut = cut - 1 end
    msg = string.sub(msg, 1, cut)
  end
  return cjson.encode({fingerprint = ev.fingerprint, project_id = ev.project_id, service = ev.service,
                       level = ev.level, message = msg, first_seen = ev.received_at})
end

-- ---- dedup buckets (same layout as dedup_state.lua; see core/dedup.py) ----
local function dedup_open(prefix, meta, ttl, nb, now_s)
  local len = math.ceil(ttl / nb)
  local d = {prefix = prefix, meta = meta, len = len, nb = nb, cur = math.floor(now_s / len),
             shards = {}, expiring = {}, ttl = ttl}
  for b = d.cur - nb, d.cur do
    local s = redis.call('HGET', meta, 's:' .. b)
    if s then d.shards[b] = tonumber(s) end
  end
  return d
end

local function dedup_find(d, seed, digest)
  for b = d.cur, d.cur - d.nb, -1 do
    local s = d.shards[b]
    if s then
      local v = redis.call('HGET', d.prefix .. b .. ':' .. (seed % s), digest)
      if v then return tonumber(v) end
    end
  end
  return nil
end

local function dedup_put(d, seed, digest, value)
  local s = d.shards[d.cur]
  if not s then  -- first write of this bucket: size it on the larger of the two previous buckets' counts
    local c = redis.call('HMGET', d.meta, 'n:' .. (d.cur - 1), 'n:' .. (d.cur - 2))
    local prev = math.max(tonumber(c[1] or '0'), tonumber(c[2] or '0'))
    s = MIN_SHARDS
    while s * SHARD_TARGET < prev and s < MAX_SHARDS do s = s * 2 end
    redis.call('HSET', d.meta, 's:' .. d.cur, s)
    for b = d.cur - 2 * d.nb - 2, d.cur - d.nb - 1 do  -- buckets past their window
      redis.call('HDEL', d.meta, 's:' .. b, 'n:' .. b)
    end
    redis.call('EXPIRE', d.meta, 2 * d.ttl + 2 * d.len)
    d.shards[d.cur] = s
  end
  local key = d.prefix .. d.cur .. ':' .. (seed % s)
  redis.call('HSET', key, digest, value)
  if not d.expiring[key] then
    redis.call('EXPIREAT', key, (d.cur + d.nb + 1) * d.len + 1)
    d.expiring[key] = true
  end
end

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)

-- ---- dedup lookup (before any write: a re-run must see only what earlier runs wrote) ----
local token = tonumber(ARGV[7])
local d = dedup_open(ARGV[1], KEYS[6], tonumber(ARGV[2]), tonumber(ARGV[3]), now_s)
local n = (#ARGV - FIXED_ARGS) / PER_EVENT
local found, seen = {}, {}
local mine = false
for i = 1, n do
  local base = FIXED_ARGS + (i - 1) * PER_EVENT
  local id = ARGV[base + 1] .. ':' .. ARGV[base + 2]
  if seen[id] then
    found[i] = 0  -- the same event twice in one call: the later one is a duplicate
  else
    seen[id] = true
    local v = dedup_find(d, tonumber(ARGV[base + 1]), ARGV[base + 2])
    if v then
      if math.floor(v / 8) == token then found[i] = -1; mine = true else found[i] = 0 end
    end
  end
end

-- ---- admission, unless an earlier run of this call already counted (then only answer what it did) ----
if not mine then
  -- deadline: never count once the caller may have stopped waiting (it answers 503 = "not counted")
  local deadline = tonumber(ARGV[8])
  if deadline > 0 and now_ms > deadline then
    return {-2, now_ms}
  end
  local depth = redis.call('XLEN', KEYS[1])
  if depth >= tonumber(ARGV[4]) then
    return {-1, now_ms, depth}
  end
end

-- ---- count and enqueue ----
local bodies = {}
local result = {0, now_ms}
for i = 1, n do
  local base = FIXED_ARGS + (i - 1) * PER_EVENT
  if found[i] then
    result[i + 2] = found[i]
  else
    local fp = ARGV[base + 3]
    dedup_put(d, tonumber(ARGV[base + 1]), ARGV[base + 2], token * 8 + QUEUED)
    redis.call('HINCRBY', KEYS[2], fp, 1)
    local total = redis.call('HINCRBY', KEYS[3], fp, 1)
    result[i + 2] = total
    redis.call('SADD', KEYS[4], fp)
    if total == 1 then
      local s = summary(ARGV[base + 4])
      if s then redis.call('HSETNX', KEYS[5], fp, s) end
      redis.call('SADD', KEYS[7], fp)
    end
    bodies[#bodies + 1] = ARGV[base + 4]
  end
end
if #bodies > 0 then
  redis.call('HINCRBY', KEYS[6], 'n:' .. d.cur, #bodies)
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[5] .. table.concat(bodies, ',') .. ARGV[6])
end
return result
