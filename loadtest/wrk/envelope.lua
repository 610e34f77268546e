-- wrk script for `make bench`'s Sentry case: POST /api/<project>/envelope/ like the Python SDK does, one
-- gzip-compressed envelope with one event per request (bodies pre-built by loadtest/bench.py, cycled).
-- Events carry no event_id: the node derives one from nginx's per-request X-Edge-Request-ID, so every
-- request is a new event (counted), with no per-request compression in the generator.
-- Arguments (after `--`): path, ingest key, file of bodies (each: 8 ASCII digits of length, then the bytes).

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local bodies = {}
local index = 0
n2xx, n429, n5xx, nother, accepted = 0, 0, 0, 0, 0

function init(args)
   local path, key, file = args[1], args[2], args[3]
   local f = assert(io.open(file, "rb"))
   local data = f:read("*a")
   f:close()
   local pos = 1
   while pos <= #data do
      local n = tonumber(data:sub(pos, pos + 7))
      table.insert(bodies, data:sub(pos + 8, pos + 7 + n))
      pos = pos + 8 + n
   end
   index = tid
   wrk.method = "POST"
   wrk.path = path
   wrk.headers["Content-Type"] = "application/x-sentry-envelope"
   wrk.headers["Content-Encoding"] = "gzip"
   wrk.headers["X-Sentry-Auth"] = "Sentry sentry_key=" .. key .. ", sentry_version=7, sentry_client=sentry.python/2.0"
end

function request()
   index = index % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[index])
end

function response(status, headers, body)
   if status >= 200 and status < 300 then n2xx = n2xx + 1
   elseif status == 429 then n429 = n429 + 1
   elseif status >= 500 then n5xx = n5xx + 1
   else nother = nother + 1 end
end

function done(summary, latency, requests)
   local t = {n2xx = 0, n429 = 0, n5xx = 0, nother = 0, accepted = 0}
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
      '"non2xx":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,' ..
      '"n2xx":%d,"n429":%d,"n5xx":%d,"nother":%d,"accepted":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency:percentile(99.9),
      latency.max, t.n2xx, t.n429, t.n5xx, t.nother, t.accepted))
end
