-- wrk script: POST one chat completion per request and print machine-readable results.
-- BENCH_BODY: the JSON body file; BENCH_TOKEN: a bearer token (empty for the mock).
local f = assert(io.open(os.getenv("BENCH_BODY"), "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("BENCH p50_us=%d p99_us=%d rps=%.1f requests=%d errors=%d\n",
    latency:percentile(50), latency:percentile(99), summary.requests / secs,
    summary.requests, errors))
end
