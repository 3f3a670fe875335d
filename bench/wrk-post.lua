-- wrk script: POST a fixed JSON body and print one machine-readable result line.
--
-- Environment:
--   BENCH_BODY_FILE  file holding the request body (JSON)
--   BENCH_AUTH       optional bearer token
--   BENCH_LABEL      label echoed in the result line

local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local payload = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = payload
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT label=%s requests=%d duration_us=%d bytes=%d connect_err=%d read_err=%d write_err=%d status_err=%d timeout_err=%d "
      .. "mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    os.getenv("BENCH_LABEL") or "-", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
