-- Look customers up by phone; phones are +1555 followed by 7 digits, 0..N-1.
local token = os.getenv("BENCH_TOKEN")
local count = tonumber(os.getenv("BENCH_CUSTOMERS"))
local path_only = os.getenv("BENCH_PATH")

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  if path_only then
    return wrk.format("GET", path_only)
  end
  local n = math.random(0, count - 1)
  return wrk.format("GET", string.format("/v1/customers?phone=%%2B1555%07d", n),
                    {["Authorization"] = "Bearer " .. token})
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors_status": %d, "errors_other": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
