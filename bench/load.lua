-- wrk script for bench/load.sh (issue 20). With BENCH_BODY set, every request is a POST of that
-- JSON text (the URL's path is the one given on wrk's command line); without it wrk's default GET.
-- done() prints one machine-readable line for load.sh:
--   RESULT req/s p50_ms p95_ms p99_ms requests non2xx socket_errors bytes_per_response
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = body
end

done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local n = summary.requests
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d %d %.0f\n",
    n / secs,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    n, e.status, e.connect + e.read + e.write + e.timeout,
    n > 0 and summary.bytes / n or 0))
end
