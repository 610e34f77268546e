-- wrk script for `make bench`: POST bodies with varied fingerprints and unique event ids, status codes
-- split into 2xx / 429 / 5xx / other, and one machine-readable result line (WRKJSON) at the end.
-- Arguments (after `--`): path, ingest key, batch size (0 = single events to /errors/log).
-- Mix as loadtest/payloads.py: 60 % of events from 5 hot groups, 30 % from 50 warm, 10 % from a 20k tail.

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")  -- setup, count, done

local path, key, batch = "/errors/log", "", 0
local seq = 0

function init(args)
   path = args[1] or path
   key = args[2] or ""
   batch = tonumber(args[3] or "0")
   math.randomseed(os.time() * 1000 + tid)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   if key ~= "" then wrk.headers["X-Faultline-Key"] = key end
end

local function group()
   local r = math.random()
   if r < 0.6 then return "hot-" .. math.random(0, 4) end
   if r < 0.9 then return "warm-" .. math.random(0, 49) end
   return "tail-" .. math.random(0, 19999)
end

local function event()
   seq = seq + 1
   local g = group()
   -- thread id + random + sequence: unique across threads and across runs
   local id = string.format("%08x%08x%016x", tid, math.random(0, 0x7fffffff), seq)
   return string.format(
      '{"message":"TimeoutError: upstream timed out after 30s (%s)","service":"checkout","level":"error",' ..
      '"stack":"File \\"app/%s.py\\", line 42, in handler","context":{"path":"/api/%s"},' ..
      '"fingerprint":"%s","event_id":"%s"}', g, g, g, g, id)
end

function request()
   if batch > 0 then
      local parts = {}
      for i = 1, batch do parts[i] = event() end
      return wrk.format(nil, path, nil, '{"events":[' .. table.concat(parts, ",") .. ']}')
   end
   return wrk.format(nil, path, nil, event())
end

function response(status, headers, body)
   if count(status) and batch > 0 then
      accepted = accepted + (tonumber(string.match(body, '"accepted":(%d+)')) or 0)
   end
end
