-- wrk script for bench/http.sh (issue 5). BENCH_MODE=execute posts the hello-world script to
-- /api/v1/execute, BENCH_MODE=stored runs it there by name (stored as "hello"); anything else
-- leaves wrk's default GET of the URL given on the command line.
-- done() prints one machine-readable line that http.sh turns into the table.
local mode = os.getenv("BENCH_MODE")
if mode == "execute" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"script": "addVar(greeting, \\"Hello\\")\\naddResult(greeting)\\n"}'
elseif mode == "stored" then
  -- The same script, stored in the registry as "hello" by http.sh.
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = '{"name": "hello"}'
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d %d\n",
    summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
