-- wrk script for tests/bench/api_bench.sh: PATCH of a small object into session properties,
-- rotating over a set of session ids so the store sees both new sessions and merges into
-- existing ones, and counting response statuses so a benchmark of errors cannot pass for a
-- benchmark of writes.
--
-- Usage: wrk ... -H 'maven-api-key: KEY' -s patch.lua http://HOST:PORT -- ACCOUNT [NAMESPACE] [SESSIONS]
--   ACCOUNT    account id in the path (required)
--   NAMESPACE  default "bench"
--   SESSIONS   how many distinct session ids each wrk thread rotates over (default 1024)
-- At the end it prints one line: "patch statuses: 204=N other=M", followed by " (first: S)"
-- with the first status that was not 204 when there was one.

local threads = {}
local thread_counter = 0

function setup(thread)
   thread_counter = thread_counter + 1
   thread:set("tid", thread_counter)
   table.insert(threads, thread)
end

local requests = {}
local nreq = 0
local next_req = 0
ok204 = 0
other = 0
first_other = 0

function init(args)
   local account = args[1]
   if account == nil then
      error("patch.lua needs the account id: wrk ... -s patch.lua URL -- ACCOUNT")
   end
   local ns = args[2] or "bench"
   local sessions = tonumber(args[3] or "1024")
   local body = '{"a":1,"b":"two","c":[3]}'

   -- wrk.format() with nil headers uses wrk.headers, which already holds the -H headers.
   wrk.headers["Content-Type"] = "application/json"
   -- Prebuilt requests: the Lua side stays out of the measurement as far as it can.
   for i = 0, sessions - 1 do
      local path = string.format("/v1/account/%s/%s/t%d-s%d/properties", account, ns, tid, i)
      requests[i] = wrk.format("PATCH", path, nil, body)
   end
   nreq = sessions
end

function request()
   local r = requests[next_req]
   next_req = (next_req + 1) % nreq
   return r
end

function response(status, headers, body)
   if status == 204 then
      ok204 = ok204 + 1
   else
      other = other + 1
      if first_other == 0 then
         first_other = status
      end
   end
end

function done(summary, latency, requests)
   local total204, totalother, first = 0, 0, 0
   for _, t in ipairs(threads) do
      total204 = total204 + t:get("ok204")
      totalother = totalother + t:get("other")
      if first == 0 then
         first = t:get("first_other")
      end
   end
   local note = ""
   if totalother > 0 then
      note = string.format(" (first: %d)", first)
   end
   io.write(string.format("patch statuses: 204=%d other=%d%s\n", total204, totalother, note))
end
