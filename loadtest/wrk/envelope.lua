-- wrk script for `make bench`'s Sentry case: POST /api/<project>/envelope/ like the Python SDK does, one
-- gzip-compressed envelope with one event per request (bodies pre-built by loadtest/bench.py, cycled).
-- Events carry no event_id: the node derives one from nginx's per-request X-Edge-Request-ID, so every
-- request is a new event (counted), with no per-request compression in the generator.
-- Arguments (after `--`): path, ingest key, file of bodies (each: 8 ASCII digits of length, then the bytes).

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")  -- setup, count, done

local bodies = {}
local index = 0

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
   count(status)
end
