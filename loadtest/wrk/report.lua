-- What every wrk script of loadtest/ shares: the threads' counters (2xx / 429 / 5xx / other, accepted
-- events of batches) and the one machine-readable result line (WRKJSON) loadtest/wrkrun.py parses.
-- Loaded by dofile() from the script's own folder; the script's response() calls count(status).

threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

n2xx, n429, n5xx, nother, accepted = 0, 0, 0, 0, 0

-- true for a 2xx (the caller may then read the body)
function count(status)
   if status >= 200 and status < 300 then n2xx = n2xx + 1; return true
   elseif status == 429 then n429 = n429 + 1
   elseif status >= 500 then n5xx = n5xx + 1
   else nother = nother + 1 end
   return false
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
