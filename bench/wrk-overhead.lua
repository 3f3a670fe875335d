-- wrk script: like wrk-post.lua, but also collects the gateway's
-- x-deltallm-overhead-us response header. Defining response() makes wrk
-- hand every response to Lua, which costs load-generator CPU, so this script
-- is only used for a short separate sampling run, never for the measured runs.

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

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Globals, not locals: done() reads them from each thread with thread:get().
samples = {}
n = 0

function response(status, headers, body)
  local v = headers["x-deltallm-overhead-us"] or headers["X-Deltallm-Overhead-Us"]
  if v and n < 200000 then
    n = n + 1
    samples[n] = tonumber(v)
  end
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local s = t:get("samples")
    local count = t:get("n") or 0
    for i = 1, count do
      all[#all + 1] = s[i]
    end
  end
  table.sort(all)
  local count = #all
  if count == 0 then
    io.write(string.format("OVERHEAD label=%s samples=0\n", os.getenv("BENCH_LABEL") or "-"))
    return
  end
  local sum = 0
  for i = 1, count do
    sum = sum + all[i]
  end
  local function pct(p)
    local idx = math.max(1, math.min(count, math.ceil(count * p / 100)))
    return all[idx]
  end
  io.write(string.format("OVERHEAD label=%s samples=%d mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    os.getenv("BENCH_LABEL") or "-", count, sum / count, pct(50), pct(90), pct(99), all[count]))
end
