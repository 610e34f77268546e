-- wrk script for `python -m loadtest.wrkload` (soak and paced rates with a compiled client): ingest.lua's
-- events, sent on a schedule, and a tally of the accepted events by fingerprint for the count check.
-- Arguments (after `--`): path, ingest key, batch size (as ingest.lua), then
--   gap: > 0: ms between two requests of this thread (an open rate: the thread's connections take the slots
--        in turn, so a slow answer does not delay the next request while a connection is free);
--        < 0: every connection pauses -gap ms after each answer (a k6/locust user: request, sleep 1 s);
--   per_thread: connections per thread (their first requests are spread over one gap, not sent at once).
-- The tally goes to the file named by $WRK_TALLY: one "fingerprint count" line per group, then
-- "#unanswered n": requests sent that got no answer (timed out, or in flight when the run ended).

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "ingest.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
int clock_gettime(int clk, wrk_timespec *tp);
]]
local now_ts = ffi.new("wrk_timespec")
local function now_ms()
   ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
   return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local gap, per_thread, calls, next_at = 1000, 1, 0, nil
tally, sent, answered = {}, 0, 0

local ingest_request = request
function request()
   sent = sent + 1
   return ingest_request()
end

local ingest_init = init
function init(args)
   ingest_init(args)
   gap = tonumber(args[4] or "1000")
   per_thread = tonumber(args[5] or "1")
end

function delay()
   calls = calls + 1
   if gap < 0 then  -- closed loop: each connection's first request at a random point of one pause
      if calls <= per_thread then return math.random() * -gap end
      return -gap
   end
   local t = now_ms()
   if next_at == nil then next_at = t + math.random() * gap end
   local wait = next_at - t
   next_at = next_at + gap
   return wait > 0 and wait or 0
end

function response(status, headers, body)
   answered = answered + 1
   if count(status) then
      local fp = string.match(body, '"fingerprint":"([^"]+)"')
      local dup = string.find(body, '"duplicate":true', 1, true)
      if fp and not dup then tally[fp] = (tally[fp] or 0) + 1 end
   end
end

local report_done = done
function done(summary, latency, requests)
   report_done(summary, latency, requests)
   local path = os.getenv("WRK_TALLY")
   if not path then return end
   local all, unanswered = {}, 0
   for _, thread in ipairs(threads) do
      for fp, n in pairs(thread:get("tally") or {}) do all[fp] = (all[fp] or 0) + n end
      unanswered = unanswered + thread:get("sent") - thread:get("answered")
   end
   local f = assert(io.open(path, "w"))
   for fp, n in pairs(all) do f:write(fp, " ", n, "\n") end
   -- sent without an answer (timed out, or still in flight when the run ended): counted or not, unknown
   f:write("#unanswered ", unanswered, "\n")
   f:close()
end
