-- Accept a batch of events atomically: refuse if late, dedup by (project, event id), shed load, count, enqueue.
-- The events come in SECTIONS, one per key shard they fall in (core/keys.py), each with that shard's keys:
-- on Redis Cluster a call holds one section (its keys share a slot); on one server (redis://, Sentinel) ONE
-- call carries a loop turn's events of every shard (api/ingestcall.py): TIME, the deadline, the queue check,
-- the limiter and the task's XADD happen once per call, not once per shard (issue 12 must-show 6).
-- KEYS: 10 per section, in section order: task stream, pending deltas (hash: per group and per group-hour),
-- live totals (hash), live-feed dirty set, live-feed group summaries (hash), dedup meta (hash), groups new to
-- the live hash (set), quota overrides (hash), quota GCRA state (hash), dropped counters (hash)
-- ARGV[1] dedup TTL s, ARGV[2] dedup buckets per TTL, ARGV[3] queue soft limit of ONE shard's stream,
-- ARGV[4] message head, ARGV[5] message tail, ARGV[6] call token, ARGV[7] deadline in Redis ms (0 = none),
-- ARGV[8..10] default per-second quota, per-minute quota, new groups per hour (0 = no limit), ARGV[11] limits
-- on (1) / off (0), ARGV[12] shares (the limits above are the project's whole; on a cluster each shard's
-- section admits its 1/shards share into its own state; on one server 1: every section names the same quota
-- keys, see core/ratelimit/quota.py),
-- ARGV[13] M = how many ARGV follow for the request rate limiter (0 = none), ARGV[14] 1 when this call is a
-- re-run of a call whose reply was lost, else 0, ARGV[15] S = tier sets, then S x (tier count t, then
-- t x (window key prefix, limit, window ms)), then ONE per limited request of this call (api/ratelimit.py
-- folds the limiter of the ingest routes into this call on one key shard):
-- "<tier set>|<first event>|<event count>|<member>|<client>" (window key = its tier's prefix .. client),
-- then per section: dedup key prefix, new-groups key prefix, feed index key prefix (per-project keys =
-- prefix .. project id: same {hash tag} as the section's KEYS), the old dedup key prefix and meta hash
-- to read as well ('' = none), its event count c, then c x (dedup seed, dedup digest, fingerprint, event
-- JSON, project id) (core/dedup.py). Events are numbered across sections.
-- Dedup layout (core/deduphome.py): sections naming the same dedup meta (one server: every shard's ids
-- live in the global tag's layout) share ONE dedup state: one meta read and one id count per call; a
-- section's old layout (its shard's own, before the upgrade) is only looked up, never written.
-- The call's task (every counted event, whatever its section) is ONE message on the FIRST section's stream:
-- workers find each event's shard from its fingerprint (core/dedup.py JobStates.by_shard); the queue check
-- is that stream's length against one stream's share of the soft limit (the caller makes the first section
-- the shard of its first event, so tasks spread over the streams as evenly as the events do).
-- Returns {status, redis_ms, r1..rn, o1..on, l1..lL} where l = 5 figures per limited request in ARGV order,
-- {allowed, tier index, remaining, wait µs, now µs} (_sliding_window.lua); a refused request's events are
-- neither counted nor remembered (r = 0, o = 0):
--   status 0 = done; r = live total after this event (1 = first sighting), 0 = duplicate of another call's
--   event or not counted (rate limited), -1 = counted by an earlier run of THIS call (same token: the caller
--   lost that run's reply); o = 0 counted in its own group (or not counted), 1 counted in the project's
--   overflow group, -w = rate limited by the project's quota, one more event fits in w ms;
--   status -1 = queue over its soft limit, r1 = depth (nothing counted);
--   status -2 = the call arrived after its deadline (nothing counted: the caller has given up or will).
-- A run that finds an earlier run of its call (same token) counted only reports (r = -1 for those events,
-- the others not counted: o = -1000 if that run's quota refused them), whatever its deadline: one run counts.
-- Dedup hashes (_dedup.lua) are named here from each section's prefix: every one of them carries the same
-- {hash tag} as that section's KEYS, so a one-section call stays single-slot on Redis Cluster.
-- Live feed (core/feed.py): every counted fingerprint is SADDed to the dirty set, which the coalescer drains
-- every 250 ms; on a first sighting a small group summary is stored once (HSETNX) for its error:new, and the
-- fingerprint is noted in the live-new set so the scheduler rebases its live total on the DB's (workers/prune.py).
-- Per-project quota and new-group cap: _limits.lua ([limits] marks its uses here) and core/ratelimit/quota.py.
local LIMIT_ARGS = tonumber(ARGV[13])
local FIXED_ARGS, PER_EVENT, NKEYS = 13 + LIMIT_ARGS, 5, 10
local QUEUED = 0

--#include _sliding_window.lua
--#include _dedup.lua

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

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ms = now_s * 1000 + math.floor(tonumber(t[2]) / 1000)
local hour = math.floor(now_s / 3600)

-- ---- sections: each key shard's keys, prefixes and events; `at[i]` = the ARGV index of event i ----
local sections, at, sec_of = {}, {}, {}
do
  local a, n = FIXED_ARGS + 1, 0
  for j = 1, #KEYS / NKEYS do
    local k = (j - 1) * NKEYS
    local sec = {stream = KEYS[k + 1], pending = KEYS[k + 2], live = KEYS[k + 3], dirty = KEYS[k + 4],
                 summaries = KEYS[k + 5], meta = KEYS[k + 6], live_new = KEYS[k + 7], quota_conf = KEYS[k + 8],
                 quota_state = KEYS[k + 9], dropped = KEYS[k + 10], dedup_prefix = ARGV[a],
                 new_groups = ARGV[a + 1], feed_index = ARGV[a + 2], old_prefix = ARGV[a + 3],
                 old_meta = ARGV[a + 4]}
    local c = tonumber(ARGV[a + 5])
    a = a + 6
    for _ = 1, c do
      n = n + 1
      at[n], sec_of[n] = a - 1, sec  -- event i's arguments are ARGV[at[i] + 1 .. at[i] + PER_EVENT]
      a = a + PER_EVENT
    end
    sections[j] = sec
  end
end
local n = #at

-- ---- dedup lookup (before any write: a re-run must see only what earlier runs wrote) ----
local token = tonumber(ARGV[6])
local ttl, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local opened, states = {}, {}  -- dedup meta -> its state: sections sharing a layout open it once
local function open(prefix, meta)
  local d = opened[meta]
  if not d then
    d = dedup_open(prefix, meta, ttl, nb, now_s)
    opened[meta] = d
    states[#states + 1] = d
  end
  return d
end
for _, sec in ipairs(sections) do
  sec.d = open(sec.dedup_prefix, sec.meta)
  if sec.old_prefix ~= '' then sec.old = open(sec.old_prefix, sec.old_meta) end
end
local found, seen = {}, {}
local mine = false
for i = 1, n do
  local base, sec = at[i], sec_of[i]
  local id = sec.dedup_prefix .. ARGV[base + 1] .. ':' .. ARGV[base + 2]
  if seen[id] then
    found[i] = 0  -- the same event twice in one call: the later one is a duplicate
  else
    seen[id] = true
    local v = dedup_find(sec.d, tonumber(ARGV[base + 1]), ARGV[base + 2])
    if not v and sec.old then v = dedup_find(sec.old, tonumber(ARGV[base + 1]), ARGV[base + 2]) end
    if v then
      if math.floor(v / 8) == token then found[i] = -1; mine = true else found[i] = 0 end
    end
  end
end

-- ---- admission, unless an earlier run of this call already counted: then this run only REPORTS what that
-- run did, whatever its deadline, and writes nothing (api/ingestrun.py keeps earlier runs alive and takes
-- whichever answer comes first: any answer of the call must then tell the same, so only ONE run may count;
-- and its final past-deadline probe may not count either) ----
local report = mine
if not mine then
  -- deadline: never count once the caller may have stopped waiting (it answers 503 = "not counted")
  local deadline = tonumber(ARGV[7])
  if deadline > 0 and now_ms > deadline then
    return {-2, now_ms}
  end
  local depth = redis.call('XLEN', sections[1].stream)
  if depth >= tonumber(ARGV[3]) then
    return {-1, now_ms, depth}
  end
end

-- ---- request rate limiter (folded in: one Redis call per loop turn for the limiter and the count) ----
-- After the admission checks (a late or shed call logs nothing), before counting: a refused request's
-- events are skipped. `rerun` = true: a re-run of this call finds the requests its lost run admitted.
local refused, decisions = {}, {}
if LIMIT_ARGS > 0 then
  local rerun = ARGV[14] == '1'  -- only a re-run may find its requests already logged (one ZSCORE each)
  local frozen = report or nil  -- a report logs nothing: a request its counting run refused stays refused
  local windows = {}  -- the windows this call has read (_sliding_window.lua): a client's later requests reuse them
  local sets = {}
  local a = 16
  for s = 1, tonumber(ARGV[15]) do
    local tiers = tonumber(ARGV[a])
    local set = {prefixes = {}, limits = {}, windows = {}}
    for i = 1, tiers do
      local b = a - 2 + 3 * i
      set.prefixes[i], set.limits[i], set.windows[i] = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    end
    sets[s] = set
    a = a + 1 + 3 * tiers
  end
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  while a <= FIXED_ARGS do
    local s, first, count, member, client = string.match(ARGV[a], '^(%d+)|(%d+)|(%d+)|([^|]+)|(.*)$')
    local set = sets[tonumber(s)]
    first, count = tonumber(first), tonumber(count)
    local wkeys = {}
    for i = 1, #set.prefixes do wkeys[i] = set.prefixes[i] .. client end
    local d = sliding_window(wkeys, member, set.limits, set.windows, now_us, rerun, windows, frozen)
    if frozen and d[1] == 0 then  -- a request with an event the counting run counted was admitted there,
      for i = first, first + count - 1 do  -- though its log entry may have left a short window since
        if found[i] == -1 then d = {1, 1, 0, 0, now_us}; break end
      end
    end
    for k = 1, 5 do decisions[#decisions + 1] = d[k] end
    if d[1] == 0 then
      for i = first, first + count - 1 do refused[i] = true end
    end
    a = a + 1
  end
  sliding_window_flush(windows)  -- the admitted requests' log entries: one ZADD per window key
end

--#include _limits.lua

-- ---- count and enqueue ----
-- The counts of a call are added once per group, not once per event (60 % of events hit 5 groups): event k
-- of a group's n in this call gets the total final - n + k, exactly what n single increments would have
-- answered, since nothing else runs while the script does. 4 commands per group instead of 4 per event.
-- A group's counts go to its event's section (its shard's hashes: the scheduler syncs them per shard).
local bodies = {}
local result = {0, now_ms}
local groups, order = {}, {}  -- section's stream .. fp -> {n = events counted here, pid, sec, indexes, bodies}
local hours = {}  -- "<fp>@<project>@<hour>" -> {sec, events counted here}
for i = 1, n do
  local base, sec = at[i], sec_of[i]
  local outcome = 0
  if refused[i] then
    result[i + 2] = 0  -- its request was refused by the rate limiter: not counted, not remembered
  elseif found[i] then
    result[i + 2] = found[i]
  elseif report then
    -- not remembered by the run that counted: its project's quota refused it there (a refused request's
    -- events are `refused` above); still refused, nothing written. 1 s: that run's exact wait is not kept
    result[i + 2], outcome = 0, -1000
  else
    local fp, body, pid = ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
    -- [limits] checked after dedup (a duplicate costs no quota); a rate-limited event is not remembered,
    -- so the client may send it again later and have it counted
    local wait = limits_on and quota_wait(sec, pid) or 0
    if wait > 0 then
      outcome = -math.ceil(wait / 1000)
      redis.call('HINCRBY', sec.dropped, pid .. ':rate_limited', 1)
      result[i + 2] = 0
    else
      -- [limits] a new group over the project's cap is counted into its overflow group (a group counted
      -- earlier in this call exists, though its increment is still to come)
      if limits_on and project(sec, pid).cap > 0 and not groups[sec.stream .. fp]
          and redis.call('HEXISTS', sec.live, fp) == 0 and not group_admitted(sec, pid, fp) then
        local ofp = overflow_fp(pid)
        body = overflow_body(body, fp, ofp, project(sec, pid).cap)
        fp = ofp
        outcome = 1
        redis.call('HINCRBY', sec.dropped, pid .. ':overflow', 1)
      end
      dedup_put(sec.d, tonumber(ARGV[base + 1]), ARGV[base + 2], token * 8 + QUEUED)
      local gk = sec.stream .. fp
      local g = groups[gk]
      if not g then
        g = {n = 0, fp = fp, pid = pid, sec = sec, events = {}, bodies = {}}
        groups[gk] = g
        order[#order + 1] = gk
      end
      g.n = g.n + 1
      g.events[g.n], g.bodies[g.n] = i, body
      -- the hour bucket of the group page's chart rides in the same hash, so the sync applies it with the
      -- count, exactly once (field "<fp>@<project>@<hour>"; workers/sync.py tells the two kinds apart)
      local field = fp .. '@' .. pid .. '@' .. hour
      local hk = sec.stream .. field
      local h = hours[hk]
      if not h then h = {sec = sec, field = field, n = 0}; hours[hk] = h end
      h.n = h.n + 1
            bodies[#bodies + 1] = body
    end
  end
  result[n + i + 2] = outcome
end
for _, gk in ipairs(order) do
  local g = groups[gk]
  local fp, sec = g.fp, g.sec
  redis.call('HINCRBY', sec.pending, fp, g.n)
  local final = redis.call('HINCRBY', sec.live, fp, g.n)
  for k = 1, g.n do result[g.events[k] + 2] = final - g.n + k end
  redis.call('SADD', sec.dirty, fp)
  local k = 1 - (final - g.n)  -- the event whose total is 1: the group's first sighting, if it is here
  if k >= 1 and k <= g.n then
    local s = summary(g.bodies[k])
    if s then redis.call('HSETNX', sec.summaries, fp, s) end
    redis.call('SADD', sec.live_new, fp)
    redis.call('SADD', sec.feed_index .. g.pid, fp)  -- [limits] the project's feed index (what subscribe reads)
  end
end
for _, h in pairs(hours) do
  redis.call('HINCRBY', h.sec.pending, h.field, h.n)
end
quota_save()  -- [limits] quota state, once per project touched
for _, d in ipairs(states) do dedup_close(d) end
if #bodies > 0 then
  redis.call('XADD', sections[1].stream, '*', 'data', ARGV[4] .. table.concat(bodies, ',') .. ARGV[5])
end
for k = 1, #decisions do result[2 * n + 2 + k] = decisions[k] end
return result
