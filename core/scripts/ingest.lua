-- Accept a batch of events atomically: shed load, dedup by event id, per-project quota, new-group cap,
-- count, enqueue.
-- KEYS[1] task stream, KEYS[2] pending deltas (hash), KEYS[3] live totals (hash),
-- KEYS[4] live-feed dirty set, KEYS[5] live-feed group summaries (hash),
-- KEYS[6] quota overrides (hash), KEYS[7] quota GCRA state (hash), KEYS[8] dropped counters (hash),
-- KEYS[9..] event keys
-- ARGV[1] dedup TTL s, ARGV[2] queue soft limit, ARGV[3] message head, ARGV[4] message tail,
-- ARGV[5..7] default per-second quota, per-minute quota, new groups per hour (0 = no limit),
-- ARGV[8] limits on (1) / off (0), ARGV[9] new-groups key prefix, ARGV[10] feed index key prefix
-- (per-project keys = prefix .. project id: same {hash tag}, same slot), then per event:
-- fingerprint, event JSON, project id.
-- Returns {accepted, r1..rN, o1..oN}: r = live total after this event (1 = first sighting) or 0 = not
-- counted (duplicate, or rate limited); o = 0 counted in its own group (or duplicate), 1 counted in the
-- project's overflow group, -w = rate limited by the project's quota, one more event fits in w ms;
-- or {-1, depth} when the queue is over its soft limit (nothing counted).
-- Live feed (core/feed.py): every counted fingerprint is SADDed to the dirty set, which the coalescer drains
-- every 250 ms; on a first sighting a small group summary is stored once (HSETNX) for its error:new, and
-- the fingerprint is added to its project's feed index (what `subscribe` reads).
local FIXED = 8
local BASE = 10
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
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[2]) then
  return {-1, depth}
end

-- ==== [limits] per-project event quota + new-group cap (core/ratelimit/quota.py says why) =============
local limits_on = ARGV[8] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local projects = {}  -- project id -> {ps, pm, cap, s, m, pruned}: read once per call, state written at the end
local function project(pid)
  local p = projects[pid]
  if p then return p end
  p = {ps = tonumber(ARGV[5]), pm = tonumber(ARGV[6]), cap = tonumber(ARGV[7])}
  local conf = redis.call('HGET', KEYS[6], pid)
  if conf then  -- "per_second|per_minute|new_groups_per_hour", empty = default
    local a, b, c = string.match(conf, '^(%d*)|(%d*)|(%d*)$')
    if a and a ~= '' then p.ps = tonumber(a) end
    if b and b ~= '' then p.pm = tonumber(b) end
    if c and c ~= '' then p.cap = tonumber(c) end
  end
  local st = redis.call('HMGET', KEYS[7], pid .. ':s', pid .. ':m')
  p.s, p.m = tonumber(st[1]) or 0, tonumber(st[2]) or 0
  projects[pid] = p
  return p
end
-- GCRA, `rate` events per `window` µs with a burst of `rate`: returns the new TAT, or nil and the wait (µs)
local function gcra(tat, rate, window)
  if rate == 0 then return tat, 0 end
  local step = window / rate
  local base = math.max(tat, now)
  if base + step - now <= window then return base + step, 0 end
  return nil, base + step - window - now
end
-- 0 = admitted (the state moves on), else µs until one more event of this project fits
local function quota_wait(pid)
  local p = project(pid)
  local s, ws = gcra(p.s, p.ps, 1000000)
  local m, wm = gcra(p.m, p.pm, 60000000)
  if s == nil or m == nil then return math.max(ws, wm, 1) end
  p.s, p.m, p.dirty = s, m, true
  return 0
end
-- a first sighting: may the project create one more group this hour? (sliding log, at most cap entries)
local function group_admitted(pid, fp)
  local p = project(pid)
  local key = ARGV[9] .. pid
  if not p.pruned then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 3600000000)
    p.pruned = true
  end
  if redis.call('ZCARD', key) >= p.cap then return false end
  redis.call('ZADD', key, now, fp)
  redis.call('PEXPIRE', key, 3600000)
  return true
end
local function overflow_fp(pid)
  return redis.sha1hex('faultline:overflow:' .. pid) .. string.sub(redis.sha1hex('faultline:overflow2:' .. pid), 1, 24)
end
-- the event as counted in the overflow group: its fingerprint and message replaced, the originals kept
-- in context.faultline_overflow (the sample shows what the event was)
local function overflow_body(body, fp, ofp, cap)
  local ok, ev = pcall(cjson.decode, body)
  if not ok or type(ev) ~= 'table' then
    local a, b = string.find(body, '"fingerprint":"' .. fp .. '"', 1, true)
    if not a then return body end
    return string.sub(body, 1, a - 1) .. '"fingerprint":"' .. ofp .. '"' .. string.sub(body, b + 1)
  end
  local ctx = type(ev.context) == 'table' and ev.context or {}
  ctx.faultline_overflow = {fingerprint = ev.fingerprint, message = ev.message}
  ev.context = ctx
  ev.fingerprint = ofp
  ev.message = 'Too many new error groups: this project created more than ' .. cap ..
               ' new groups in the last hour; events of further new groups are counted here'
  return cjson.encode(ev)
end
-- ==== [/limits] ========================================================================================

local ttl = tonumber(ARGV[1])
local n = #KEYS - FIXED
local bodies = {}
local result = {0}
for i = 1, n do
  local fp, body, pid = ARGV[BASE + 3 * i - 2], ARGV[BASE + 3 * i - 1], ARGV[BASE + 3 * i]
  local outcome = 0
  local total = 0
  -- dedup: a known event id is accepted, not counted. Checked before the quota (a duplicate costs no
  -- quota) and marked only once the event is counted (a rate-limited event may be retried and counted).
  if redis.call('EXISTS', KEYS[FIXED + i]) == 0 then
    local wait = limits_on and quota_wait(pid) or 0  -- [limits]
    if wait > 0 then
      outcome = -math.ceil(wait / 1000)
      redis.call('HINCRBY', KEYS[8], pid .. ':rate_limited', 1)
    else
      -- [limits] a new group over the project's cap is counted into its overflow group
      if limits_on and project(pid).cap > 0 and redis.call('HEXISTS', KEYS[3], fp) == 0
          and not group_admitted(pid, fp) then
        local ofp = overflow_fp(pid)
        body = overflow_body(body, fp, ofp, project(pid).cap)
        fp = ofp
        outcome = 1
        redis.call('HINCRBY', KEYS[8], pid .. ':overflow', 1)
      end
      redis.call('SET', KEYS[FIXED + i], 'queued', 'EX', ttl)
      redis.call('HINCRBY', KEYS[2], fp, 1)
      total = redis.call('HINCRBY', KEYS[3], fp, 1)
      redis.call('SADD', KEYS[4], fp)
      if total == 1 then
        local s = summary(body)
        if s then redis.call('HSETNX', KEYS[5], fp, s) end
        redis.call('SADD', ARGV[10] .. pid, fp)
      end
      bodies[#bodies + 1] = body
    end
  end
  result[i + 1] = total
  result[n + i + 1] = outcome
end
-- [limits] quota state, once per project touched
for pid, p in pairs(projects) do
  if p.dirty then
    redis.call('HSET', KEYS[7], pid .. ':s', math.ceil(p.s), pid .. ':m', math.ceil(p.m))
  end
end
if #bodies > 0 then
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[3] .. table.concat(bodies, ',') .. ARGV[4])
end
result[1] = #bodies
return result
