-- [limits] of ingest.lua: per-project event quota + new-group cap (core/ratelimit/quota.py says why).
-- Included where ingest.lua has read TIME into `t`; reads ARGV[8..12] (ingest.lua's header) and each
-- section's quota_conf, quota_state, dropped (KEYS) and new_groups (prefix).
local limits_on = ARGV[11] == '1'
local shares = tonumber(ARGV[12])
local function share(limit)  -- a shard's part of a project-wide limit (0 = no limit stays 0)
  if limit == 0 or shares == 1 then return limit end
  return math.ceil(limit / shares)
end
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- µs, from the TIME read above
-- per quota state (a cluster: each shard keeps its own share and state; one server: every section names
-- the same, the shards share it): project id -> {ps, pm, cap, s, m, pruned}, read once per call, state
-- written at the end
local quotas, quota_order = {}, {}
local function project(sec, pid)
  local projects = quotas[sec.quota_state]
  if not projects then
    projects = {}
    quotas[sec.quota_state] = projects
    quota_order[#quota_order + 1] = sec.quota_state
  end
  local p = projects[pid]
  if p then return p end
  p = {ps = tonumber(ARGV[8]), pm = tonumber(ARGV[9]), cap = tonumber(ARGV[10])}
  local conf = redis.call('HGET', sec.quota_conf, pid)
  if conf then  -- "per_second|per_minute|new_groups_per_hour", empty = default
    local a, b, c = string.match(conf, '^(%d*)|(%d*)|(%d*)$')
    if a and a ~= '' then p.ps = tonumber(a) end
    if b and b ~= '' then p.pm = tonumber(b) end
    if c and c ~= '' then p.cap = tonumber(c) end
  end
  p.ps, p.pm, p.cap = share(p.ps), share(p.pm), share(p.cap)
  local st = redis.call('HMGET', sec.quota_state, pid .. ':s', pid .. ':m')
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
local function quota_wait(sec, pid)
  local p = project(sec, pid)
  local s, ws = gcra(p.s, p.ps, 1000000)
  local m, wm = gcra(p.m, p.pm, 60000000)
  if s == nil or m == nil then return math.max(ws, wm, 1) end
  p.s, p.m, p.dirty = s, m, true
  return 0
end
-- a first sighting: may the project create one more group this hour? (sliding log, at most cap entries)
local function group_admitted(sec, pid, fp)
  local p = project(sec, pid)
  local key = sec.new_groups .. pid
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

-- the quota states moved by this call, once per project touched
local function quota_save()
  for _, key in ipairs(quota_order) do
    for pid, p in pairs(quotas[key]) do
      if p.dirty then
        redis.call('HSET', key, pid .. ':s', math.ceil(p.s), pid .. ':m', math.ceil(p.m))
      end
    end
  end
end
